"""`python cbyol/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("cbyol", tmp_path)


def test_flags_that_would_silently_disable_compression_are_refused():
    r = testing.run_train_py("cbyol", "--stochastic_projector=False", "--use_target_projector=False")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "--stochastic_projector=False would remove a part of C-BYOL's CEB" in r.stdout
    assert "--use_target_projector=False would remove" in r.stdout


def test_beta_zero_trains_only_when_asked_and_warns(tmp_path):
    r = testing.run_train_py("cbyol", "--ceb_beta=0", "--backward_view=other", "--train_steps=1",
                             "--train_batch_size=16", "--mode=train",
                             f"--model_dir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "no compression" in r.stdout


def test_final_linear_eval_prints_the_demo_table(tmp_path):
    import json
    r = testing.run_train_py("cbyol", "--train_steps=1", "--train_batch_size=16",
                             "--train_split=train[:500]", "--eval_split=test[:200]",
                             "--eval_batch_size=100", "--final_linear_eval",
                             f"--model_dir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "| pretrained |" in r.stdout and "| random_init |" in r.stdout
    table = json.loads((tmp_path / "linear_eval.json").read_text())
    for row in table.values():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["l2"] in (1e-5, 1e-6)
