"""The command line's configuration: presets and overrides, checks, config.json, the resume guard,
`common` knowing no algorithm, and an algorithm defined outside `common` trained through the job."""
import ast
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from common.ceb.settings import CEBSettings
from common.cli import flags as flags_lib
from common.cli import job, presets, settings
from common.cli.settings import setting
from common.training.models import TargetSettings

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALGORITHMS = ("simclr", "csimclr", "byol", "cbyol")


@dataclasses.dataclass(frozen=True)
class _Algo:
    alpha: float = setting(0.5, "A test hyper-parameter.")
    renamed: bool = setting(True, "A field whose flag has another name.", flag="release_name")
    ceb: CEBSettings = CEBSettings()
    target: TargetSettings = TargetSettings()

    def errors(self):
        return [] if self.alpha > 0 else ["--alpha must be positive."]


def _fresh_flags(presets_, default):
    fv = flags.FlagValues()
    flags_lib.define(fv, presets_, default)
    return fv


def test_with_overrides_reaches_nested_fields_by_flag_name_and_keeps_the_rest():
    base = presets.small_scale(_Algo())
    cfg = settings.with_overrides(base, kappa_b=3.0, learning_rate=2, release_name=False,
                                  ema_alpha=0.9)
    assert cfg.algorithm.ceb.kappa_b == 3.0 and cfg.algorithm.ceb.kappa_e == base.algorithm.ceb.kappa_e
    assert cfg.optim.learning_rate == 2.0 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.algorithm.renamed is False and cfg.algorithm.target.ema_alpha == 0.9
    assert base.optim.learning_rate == 4.0  # frozen: the preset itself is untouched
    with pytest.raises(KeyError, match="--no_such_flag"):
        settings.with_overrides(base, no_such_flag=1)


def test_parse_overrides_reads_trainer_flags_given_to_another_command():
    """Tools that write a run of a trainer take its flags as --name=value items: typed by the
    trainer's definitions (hand-written expectations), aliases translated, unknown ones refused."""
    table = {"a": presets.small_scale(_Algo())}
    got = flags_lib.parse_overrides(["--kappa_b=5", "--release_name=false", "--train_steps=7",
                                     "--ft_proj_selector=-1"], table, "a", "toy")
    assert got == {"kappa_b": 5.0, "release_name": False, "train_steps": 7,
                   "probe_input": "projection"}
    assert isinstance(got["kappa_b"], float) and isinstance(got["train_steps"], int)
    with pytest.raises(flags_lib.FlagError, match="Unknown command line flag 'kappa'.*toy/train.py"):
        flags_lib.parse_overrides(["--kappa=5"], table, "a", "toy")
    with pytest.raises(flags_lib.FlagError, match="train_steps"):
        flags_lib.parse_overrides(["--train_steps=seven"], table, "a", "toy")
    with pytest.raises(flags_lib.FlagError, match="unexpected arguments"):
        flags_lib.parse_overrides(["stray"], table, "a", "toy")


def test_two_fields_claiming_one_flag_are_refused():
    @dataclasses.dataclass(frozen=True)
    class Clash:
        seed: int = setting(1, "Clashes with the run's seed.")
    with pytest.raises(ValueError, match="--seed"):
        settings.leaf_index(settings.Experiment(algorithm=Clash()))


def test_only_flags_given_on_the_command_line_override_the_preset():
    table = {"a_small": presets.small_scale(_Algo()), "a_paper": presets.imagenet(_Algo(), 300, 0.3)}
    fv = _fresh_flags(table, "a_small")
    fv(["prog", "--config=a_paper", "--alpha=2", "--ft_proj_selector=-1"])
    name, cfg = flags_lib.resolve(fv, table, warn=lambda m: None)
    assert name == "a_paper"
    # The paper preset's values survive (the flag defaults shown by --help are the small preset's).
    assert cfg.data.dataset == "imagenet2012" and cfg.run.train_batch_size == 4096
    assert cfg.run.train_epochs == 300.0 and cfg.optim.weight_decay == 1e-6
    assert cfg.algorithm.alpha == 2.0 and cfg.model.probe_input == "projection"
    assert fv["dataset"].value == "fashion_mnist"  # nothing was written into the flags


def test_restricted_values_section_checks_and_warnings_are_collected():
    cfg = settings.with_overrides(presets.small_scale(_Algo()), no_augmentation=True, alpha=-1.0,
                                  kappa_e=0.0, ceb_beta=0.0, use_momentum_encoder=False,
                                  resnet_depth=19, train_mode="finetune")
    errors, warnings = settings.problems(cfg)
    text = "\n".join(errors)
    assert "--no_augmentation=True is not supported (pretraining needs two augmented views" in text
    assert "--use_momentum_encoder=False is not supported" in text
    assert "--alpha must be positive." in text
    assert "--kappa_e=0.0: a vMF concentration must be positive." in text
    assert "--resnet_depth=19: choose one of" in text
    assert any("no compression" in w for w in warnings)
    assert any("without --checkpoint trains from random initialisation" in w for w in warnings)
    assert settings.problems(presets.small_scale(_Algo())) == ([], [])


def test_alias_and_its_target_must_agree():
    table = {"a": presets.small_scale(_Algo())}
    fv = _fresh_flags(table, "a")
    fv(["prog", "--ft_proj_selector=-1", "--probe_input=backbone"])
    with pytest.raises(flags_lib.FlagError, match="disagree"):
        flags_lib.resolve(fv, table, warn=print)
    fv = _fresh_flags(table, "a")
    fv(["prog", "--ft_proj_selector=3"])
    with pytest.raises(flags_lib.FlagError, match="accepted values are 0, -1"):
        flags_lib.resolve(fv, table, warn=print)


def test_resume_guard_lists_every_difference_but_run_length(tmp_path):
    cfg = presets.small_scale(_Algo())
    job.write_config(str(tmp_path), "a", "a_small", cfg, ["train.py"])
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["config"]["algorithm"]["alpha"] == 0.5 and stored["command_line"] == ["train.py"]
    assert stored["versions"]["tensorflow"] == "2.21.0"
    assert stored["derived"]["train_steps"] == 840 and stored["derived"]["warmup_steps"] == 93
    longer = settings.with_overrides(cfg, train_steps=2000, mode="eval", eval_split="test[:10]",
                                     model_dir=str(tmp_path), jit_compile=False)
    # run length, job, evaluation and compilation may change
    job.check_resumable(str(tmp_path), longer)
    other = settings.with_overrides(cfg, learning_rate=1.0, kappa_b=2.0)
    with pytest.raises(flags_lib.FlagError) as e:
        job.check_resumable(str(tmp_path), other)
    assert "optim.learning_rate: 4.0 -> 1.0" in str(e.value)
    assert "algorithm.ceb.kappa_b: 10.0 -> 2.0" in str(e.value)


def test_resume_guard_takes_a_setting_newer_than_the_run_at_its_default(tmp_path):
    """A config.json written before a setting existed: the run had the setting's default, so the
    same default continues it and another value is refused (shown against the default)."""
    cfg = presets.small_scale(_Algo())
    job.write_config(str(tmp_path), "a", "a_small", cfg, ["train.py"])
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["config"]["model"]["mlp_hidden_bias"], stored["config"]["run"]["on_nonfinite"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert cfg.model.mlp_hidden_bias is False
    job.check_resumable(str(tmp_path), cfg)
    with pytest.raises(flags_lib.FlagError, match=r"model.mlp_hidden_bias: False -> True"):
        job.check_resumable(str(tmp_path), settings.with_overrides(cfg, mlp_hidden_bias=True))


def _strings_outside_docstrings(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            yield node.lineno, node.value


def test_common_names_no_algorithm_and_no_preset():
    names = set(ALGORITHMS)
    for package in ALGORITHMS:  # preset names, read from the algorithm packages themselves
        cfg_module = __import__(f"{package}.configs", fromlist=["PRESETS"])
        names.update(cfg_module.PRESETS)
    pattern = re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True))
                         + r"|simclr|byol", re.IGNORECASE)
    found = []
    for path in sorted((ROOT / "common").rglob("*.py")):
        if "tests" in path.relative_to(ROOT).parts:
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}"
                  for line, text in _strings_outside_docstrings(path) if pattern.search(text)]
    assert not found, "\n".join(found)
    imports = [f"{p.relative_to(ROOT)}" for p in (ROOT / "common").rglob("*.py")
               if re.search(r"^\s*(from|import) (c?simclr|c?byol)\b", p.read_text(), re.M)]
    assert not imports, imports


_TOY_CONFIGS = '''
    """A toy algorithm defined outside common: InfoNCE at a temperature of its own."""
    import dataclasses

    from common.cli import presets
    from common.cli.settings import setting


    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        toy_temperature: float = setting(0.5, "Temperature of the toy InfoNCE.")

        def errors(self):
            return [] if self.toy_temperature > 0 else ["--toy_temperature must be positive."]


    PRESETS = {"toy_small": presets.small_scale(ToyConfig(), train_steps=2, train_batch_size=16,
                                                 train_split="train[:512]", eval_split="test[:200]",
                                                 eval_batch_size=100, checkpoint_steps=2,
                                                 train_summary_steps=1)}
'''

_TOY_TRAIN = '''
    """python toyalgo/train.py: a fifth trainer built on common alone."""
    import tensorflow as tf

    from common.cli import job
    from common.losses import terms
    from common.training import models
    from toyalgo import configs


    class Toy(models.SharedEncoderMethod):
        metric_names = ("ssl_loss", "probe_loss", "probe_acc")

        def __init__(self, resnet_cfg, heads_cfg, num_classes, temperature):
            super().__init__(resnet_cfg, heads_cfg, num_classes, name="toy")
            self.temperature = temperature

        def ssl_loss(self, hidden, step, seed):
            z1, z2 = tf.split(terms.l2_normalize(hidden), 2, axis=0)
            logits = tf.matmul(z1, z2, transpose_b=True) / self.temperature
            labels = tf.range(tf.shape(z1)[0])
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)), {}


    def build_method(cfg, parts, num_classes):
        return Toy(parts.resnet, parts.heads, num_classes, cfg.algorithm.toy_temperature)


    if __name__ == "__main__":
        job.run(job.TrainerSpec(name="toyalgo", presets=configs.PRESETS, default_preset="toy_small",
                                build_method=build_method))
'''


def _run_toy(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(tmp_path / "toyalgo" / "train.py"), *args],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)


def test_an_algorithm_outside_common_trains_through_the_same_job(tmp_path):
    before = subprocess.run(["git", "status", "--porcelain", "common"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    pkg = tmp_path / "toyalgo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "configs.py").write_text(textwrap.dedent(_TOY_CONFIGS))
    (pkg / "train.py").write_text(textwrap.dedent(_TOY_TRAIN))
    run_dir = tmp_path / "run"

    shown = _run_toy(tmp_path, "--print_config", "--toy_temperature=0.25")
    assert shown.returncode == 0, shown.stdout[-3000:]
    printed = json.loads(shown.stdout[shown.stdout.index("{"):])
    assert printed["config"]["algorithm"] == {"toy_temperature": 0.25}
    assert printed["derived"]["train_steps"] == 2

    # XLA off (the small presets turn it on) to spare the test a compilation.
    r = _run_toy(tmp_path, f"--model_dir={run_dir}", "--toy_temperature=0.25",
                 "--jit_compile=false")
    assert r.returncode == 0, r.stdout[-3000:]
    assert (run_dir / "ckpt-2.index").exists()
    assert "probe on test[:200]: top-1" in r.stdout
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["preset"] == "toy_small" and stored["trainer"] == "toyalgo"
    assert stored["config"]["algorithm"] == {"toy_temperature": 0.25}

    # Flags of the four trainers do not exist here; checks of its own run; resume is guarded.
    for bad, message in (("--temperature=0.1", "Unknown command line flag 'temperature'"),
                         ("--toy_temperature=-1", "--toy_temperature must be positive.")):
        r = _run_toy(tmp_path, bad, f"--model_dir={tmp_path / 'never'}")
        assert r.returncode == 2 and message in r.stdout, r.stdout[-2000:]
        assert not (tmp_path / "never").exists()
    r = _run_toy(tmp_path, f"--model_dir={run_dir}", "--toy_temperature=0.5", "--train_steps=4")
    assert r.returncode == 2, r.stdout[-2000:]
    assert "algorithm.toy_temperature: 0.25 -> 0.5" in r.stdout
    after = subprocess.run(["git", "status", "--porcelain", "common"], cwd=ROOT,
                           capture_output=True, text=True).stdout
    assert after == before  # no file of common was touched
