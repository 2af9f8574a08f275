"""`python simclr/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("simclr", tmp_path)


def test_contradictory_and_meaningless_flags_stop_with_one_clear_error():
    r = testing.run_train_py("simclr", "--pretrain_loss=byol", "--resnet_depth=19",
                             "--no_augmentation=True", "--lineareval_while_pretraining=False",
                             "--explicitly_watch_vars=False")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "--pretrain_loss=byol is not supported (this trainer trains contrastive" in r.stdout
    assert "--resnet_depth=19: choose one of (18, 34, 50, 101, 152, 200)" in r.stdout
    assert "--no_augmentation=True is not supported (pretraining needs two augmented views" in \
        r.stdout
    assert "--lineareval_while_pretraining=False is not supported (the online probe" in r.stdout
    assert "--explicitly_watch_vars=False is not supported" in r.stdout
    assert "Traceback" not in r.stdout
    r = testing.run_train_py("simclr", "--kappa_e=5")
    assert r.returncode == 2 and "Unknown command line flag 'kappa_e'" in r.stdout, r.stdout[-2000:]
    r = testing.run_train_py("simclr", "--ft_proj_selector=-1", "--probe_input=backbone")
    assert r.returncode == 2 and "disagree; pass only one" in r.stdout, r.stdout[-2000:]


def test_finetune_from_a_pretraining_checkpoint(tmp_path):
    pre = tmp_path / "pre"
    r = testing.run_train_py("simclr", "--train_steps=1", "--train_batch_size=16", "--mode=train",
                             f"--model_dir={pre}")
    assert r.returncode == 0, r.stdout[-3000:]
    ft = testing.run_train_py(
        "simclr", "--train_mode=finetune", f"--checkpoint={pre}", "--fine_tune_after_block=4",
        "--proj_head_output_bn", "--mlp_init=normal", "--ft_proj_selector=-1",
        "--train_steps=2", "--train_batch_size=16", "--eval_batch_size=250",
        "--eval_split=test[:250]", f"--model_dir={tmp_path / 'ft'}")
    assert ft.returncode == 0, ft.stdout[-3000:]
    assert "probe on test[:250]" in ft.stdout
