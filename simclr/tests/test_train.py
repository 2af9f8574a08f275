"""`python simclr/train.py` as a user runs it: train, checkpoint, resume, evaluate; flag errors."""
from common import testing


def test_train_checkpoint_resume_and_eval(tmp_path):
    testing.check_small_run("simclr", tmp_path)


def test_contradictory_and_meaningless_flags_stop_with_one_clear_error():
    r = testing.run_train_py("simclr", "--pretrain_loss=byol", "--kappa_e=5", "--resnet_depth=19",
                             "--no_augmentation=True")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "--pretrain_loss=byol contradicts this trainer" in r.stdout
    assert "run byol/train.py instead" in r.stdout
    assert "--kappa_e has no effect on simclr" in r.stdout
    assert "--resnet_depth=19" in r.stdout
    assert "--no_augmentation=True is not supported (pretraining needs two augmented views" in \
        r.stdout
    assert "Traceback" not in r.stdout


def test_finetune_from_a_pretraining_checkpoint(tmp_path):
    pre = tmp_path / "pre"
    r = testing.run_train_py("simclr", "--train_steps=1", "--train_batch_size=16", "--mode=train",
                             f"--model_dir={pre}")
    assert r.returncode == 0, r.stdout[-3000:]
    ft = testing.run_train_py(
        "simclr", "--train_mode=finetune", f"--checkpoint={pre}", "--fine_tune_after_block=4",
        "--proj_head_output_bn", "--mlp_init=simclr", "--ft_proj_selector=-1",
        "--train_steps=2", "--train_batch_size=16", "--eval_batch_size=250",
        "--eval_split=test[:250]", f"--model_dir={tmp_path / 'ft'}")
    assert ft.returncode == 0, ft.stdout[-3000:]
    assert "probe on test[:250]" in ft.stdout
