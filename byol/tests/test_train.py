"""`python byol/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("byol", tmp_path)


def test_flags_that_would_change_the_algorithm_are_refused():
    r = testing.run_train_py("byol", "--use_momentum_encoder=False", "--temperature=0.2",
                             "--kappa_e=3")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "BYOL's target is always an EMA network" in r.stdout
    assert "--temperature has no effect on byol" in r.stdout
    assert "--kappa_e has no effect on byol" in r.stdout
