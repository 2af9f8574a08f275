"""`python byol/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("byol", tmp_path)


def test_flags_that_would_change_the_algorithm_are_refused():
    r = testing.run_train_py("byol", "--use_momentum_encoder=False", "--use_momentum_proj_head=False",
                             "--ema_alpha=1.5")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "--use_momentum_encoder=False is not supported (the target is always an EMA copy" \
        in r.stdout
    assert "--use_momentum_proj_head=False is not supported" in r.stdout
    assert "--ema_alpha=1.5: pass a rate in [0, 1]" in r.stdout


def test_flags_of_other_trainers_do_not_exist_here():
    for flag in ("--temperature=0.2", "--kappa_e=3"):
        r = testing.run_train_py("byol", flag)
        assert r.returncode == 2, r.stdout[-2000:]
        assert f"Unknown command line flag '{flag[2:].split('=')[0]}'" in r.stdout
