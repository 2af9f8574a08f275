"""`python csimclr/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("csimclr", tmp_path)


def test_invalid_concentrations_and_negative_beta_are_refused(tmp_path):
    r = testing.run_train_py("csimclr", "--kappa_b=0", "--ceb_beta=-1",
                             f"--model_dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "--kappa_b=0.0: a vMF concentration must be positive" in r.stdout
    assert "--ceb_beta=-1.0: pass a value >= 0" in r.stdout
    assert not (tmp_path / "run").exists()
    r = testing.run_train_py("csimclr", "--temperature=0.5")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "Unknown command line flag 'temperature'" in r.stdout
