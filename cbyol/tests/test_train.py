"""`python cbyol/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
import json

from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("cbyol", tmp_path)


def test_the_default_step_is_compiled_with_xla_and_trains(tmp_path):
    # The demo's trainer at its default, XLA, on a tiny model (the other tests turn XLA off to
    # save a compilation per run; tools/tests/test_xla.py compares the two steps).
    r = testing.run_train_py("cbyol", "--train_steps=2", "--train_batch_size=8", "--mode=train",
                             "--width_multiplier=0.0625", "--image_size=16",
                             "--proj_head_hidden_dim=16", "--proj_out_dim=8",
                             f"--model_dir={tmp_path}", xla=None)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "step 2/2" in r.stdout and (tmp_path / "ckpt-2.index").exists(), r.stdout[-2000:]
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["config"]["run"]["jit_compile"] is True


def test_flags_that_would_silently_disable_compression_are_refused(tmp_path):
    r = testing.run_train_py("cbyol", "--stochastic_projector=False", "--use_target_projector=False",
                             "--use_projector=False", "--ceb_sampling=False",
                             f"--model_dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stdout[-2000:]
    for flag, why in (("stochastic_projector", "C-BYOL's forward encoder"),
                      ("use_target_projector", "C-BYOL's backward encoder"),
                      ("use_projector", "carries e(z|x)"),
                      ("ceb_sampling", "always regresses a sample")):
        assert f"--{flag}=False is not supported (" in r.stdout and why in r.stdout, flag
    assert not (tmp_path / "run").exists()  # nothing written


def test_flags_of_other_trainers_do_not_exist_here():
    r = testing.run_train_py("cbyol", "--temperature=0.2")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "Unknown command line flag 'temperature'" in r.stdout
    r = testing.run_train_py("cbyol", "--pretrain_loss=byol")
    assert r.returncode == 2 and "--pretrain_loss=byol is not supported (this trainer trains " \
        "byol_ceb" in r.stdout, r.stdout[-2000:]


def test_beta_zero_trains_only_when_asked_and_warns(tmp_path):
    r = testing.run_train_py("cbyol", "--ceb_beta=0", "--backward_view=other", "--train_steps=1",
                             "--train_batch_size=16", "--mode=train",
                             f"--model_dir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "no compression" in r.stdout
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["config"]["algorithm"]["ceb"]["ceb_beta"] == 0.0
    assert stored["config"]["algorithm"]["backward_view"] == "other"


def test_final_linear_eval_prints_the_demo_table(tmp_path):
    r = testing.run_train_py("cbyol", "--train_steps=1", "--train_batch_size=16",
                             "--train_split=train[:500]", "--eval_split=test[:200]",
                             "--eval_batch_size=100", "--final_linear_eval",
                             "--final_eval_corruption_examples=0", f"--model_dir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "| pretrained |" in r.stdout and "| random_init |" in r.stdout
    assert "| kNN top-1 | L2 |" in r.stdout  # the corruption grid is tools/tests/test_evaluate.py's
    table = json.loads((tmp_path / "linear_eval.json").read_text())
    for row in table.values():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["l2"] in (1e-5, 1e-6)
        assert 0.0 <= row["knn_top_1"] <= 1.0 and "corruption_accuracy" not in row
