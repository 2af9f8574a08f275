"""`python csimclr/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("csimclr", tmp_path)


def test_invalid_concentrations_and_negative_beta_are_refused():
    r = testing.run_train_py("csimclr", "--kappa_b=0", "--ceb_beta=-1", "--temperature=0.5")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "--kappa_b must be positive" in r.stdout
    assert "--ceb_beta must be >= 0" in r.stdout
    assert "--temperature has no effect on csimclr" in r.stdout
