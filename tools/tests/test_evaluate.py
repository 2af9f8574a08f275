"""`python tools/evaluate.py` as a user runs it: every evaluation on the Fashion-MNIST default and on a
second TFDS dataset prepared here; results in JSON, TensorBoard and the printed table; clear refusals;
and a short pretraining that beats the same encoder randomly initialised on linear and kNN."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from common import testing
from common.data import datasets
from common.evaluation import knn, linear_eval, suite

ROOT = pathlib.Path(__file__).resolve().parents[2]


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """A second TFDS dataset, prepared in the test: 32x32 RGB squares, discs and bars in 3 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, supervised_keys=("image", "label"),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(32, 32, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
                "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 240), "test": self._generate_examples(1, 90)}

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:32, :32]
        for i in range(n):
            label = i % 3
            cy, cx = rng.integers(10, 22, 2)
            r = rng.integers(5, 9)
            mask = [(abs(yy - cy) < r) & (abs(xx - cx) < r), (yy - cy) ** 2 + (xx - cx) ** 2 < r * r,
                    abs(yy - cy) < 2][label]
            image = (rng.uniform(0, 60, (32, 32, 3)) + mask[..., None] * rng.uniform(120, 195, 3))
            yield i, {"image": image.astype(np.uint8), "label": label,
                      "file_name": f"shape_{seed}_{i:04d}.png"}


def _evaluate(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def _pretrain(run, steps: int, batch: int):
    r = testing.run_train_py("simclr", f"--train_steps={steps}", f"--train_batch_size={batch}",
                             "--mode=train", f"--checkpoint_steps={steps}",
                             "--train_summary_steps=50", "--learning_rate=2.0", f"--model_dir={run}")
    assert r.returncode == 0, r.stdout[-3000:]
    return run


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A SimCLR checkpoint of 2 steps of batch 16 (quarter-width ResNet-18, 32 px): the commands'
    plumbing, not the representation's quality, is under test here."""
    return _pretrain(tmp_path_factory.mktemp("pretrain") / "run", 2, 16)


@pytest.mark.slow
def test_a_short_pretraining_beats_the_random_encoder_on_linear_and_knn(tmp_path):
    """150 steps of batch 64 (about 5 minutes on 2 cores, hence the `slow` marker)."""
    pretrained = _pretrain(tmp_path / "run", 150, 64)
    loaded = suite.load_encoder(str(pretrained))
    assert loaded.step == 150
    data = datasets.DataConfig(dataset="fashion_mnist", train_split="train[:3000]",
                               eval_split="test[:1000]", image_size=32)
    from common.cli import job, settings
    aug = job.augment_config(settings.AugmentSettings(**loaded.config["config"]["augment"]), 32)
    tf.random.set_seed(0)
    scores = {}
    for name, encoder in (("pretrained", loaded.encoder), ("random", loaded.build())):
        feats = [linear_eval.extract_features(lambda x: encoder(x, training=False),
                                              datasets.eval_dataset(data, aug, split, 500))
                 for split in (data.train_split, data.eval_split)]
        (trx, try_), (tex, tey) = feats
        lin = linear_eval.linear_probe(trx, try_, tex, tey, 10)["test_accuracy"]
        nn = suite.knn_on_features(trx, try_, tex, tey, 10, knn.KNNConfig())["top_1"]
        scores[name] = (lin, nn)
    (lin_p, knn_p), (lin_r, knn_r) = scores["pretrained"], scores["random"]
    assert lin_p > lin_r + 0.02 and knn_p > knn_r + 0.02, scores


def test_every_evaluation_from_the_one_command_on_the_default_dataset(pretrained, tmp_path):
    out = tmp_path / "eval"
    r = _evaluate(f"--checkpoint={pretrained}", "--eval=linear,knn,finetune,corruptions",
                  "--train_split=train[:1000]", "--eval_split=test[:300]",
                  "--corruptions=gaussian_noise,jpeg_compression", "--severities=1,5",
                  "--finetune_fractions=0.05", "--finetune_epochs=2", f"--output_dir={out}")
    assert r.returncode == 0, r.stdout[-4000:]
    record = json.loads((out / "evaluation.json").read_text())
    results = record["results"]
    assert record["step"] == 2 and record["dataset"]["name"] == "fashion_mnist"
    assert set(results) == {"linear", "knn", "finetune", "corruptions"}
    for name in ("linear", "knn"):
        assert 0.0 <= results[name]["top_1"] <= results[name]["top_5"] <= 1.0
        assert results[name]["seconds"] > 0
    grid = results["corruptions"]
    assert set(grid["accuracy"]) == {"gaussian_noise", "jpeg_compression"}
    assert set(grid["accuracy"]["gaussian_noise"]) == {"1", "5"}
    assert grid["reference"] == "random_init" and np.isfinite(grid["mCE"])
    # mCE from the stored grids, recomputed here: mean over corruptions of summed error ratios.
    ref = grid["reference_grid"]["accuracy"]
    ce = [sum(1 - grid["accuracy"][c][s] for s in ("1", "5"))
          / sum(1 - ref[c][s] for s in ("1", "5")) for c in grid["accuracy"]]
    assert grid["mCE"] == pytest.approx(np.mean(ce))
    assert results["finetune"]["0.05"]["num_labelled"] == 50
    assert "| linear (logistic) | top_1 |" in r.stdout and "| knn (k=200, T=0.07) |" in r.stdout
    assert "ETA" in r.stdout
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0]))
            for v in e.summary.value}
    assert {"eval_suite/linear/top_1", "eval_suite/knn/top_1",
            "eval_suite/corruptions/mean_accuracy"} <= tags


def test_evaluations_on_a_second_tfds_dataset_prepared_here(pretrained, tmp_path):
    data_dir = tmp_path / "tfds"
    TinyShapes(data_dir=str(data_dir)).download_and_prepare()
    out = tmp_path / "eval"
    subset = tmp_path / "1percent.txt"  # a subset file in the layout of ImageNet's
    subset.write_text("".join(f"shape_0_{i:04d}.png\n" for i in range(0, 240, 8)))
    r = _evaluate(f"--checkpoint={pretrained}", "--eval=linear,knn,finetune,corruptions",
                  "--dataset=tiny_shapes", f"--data_dir={data_dir}", "--train_split=train",
                  "--eval_split=test", "--knn_k=20", f"--finetune_subset_file={subset}",
                  "--finetune_epochs=1", "--corruptions=snow", "--severities=3",
                  "--reference=none", f"--output_dir={out}")
    assert r.returncode == 0, r.stdout[-4000:]
    record = json.loads((out / "evaluation.json").read_text())
    assert record["results"]["finetune"]["1percent.txt"]["num_labelled"] == 30
    assert 0.0 <= record["results"]["corruptions"]["accuracy"]["snow"]["3"] <= 1.0
    assert "mCE" not in record["results"]["corruptions"]
    assert record["dataset"]["num_classes"] == 3
    assert record["results"]["linear"]["num_train"] == 240
    assert record["results"]["knn"]["num_test"] == 90 and record["results"]["knn"]["k"] == 20
    # The shapes are easy: above chance (1/3) for both classifiers, even from a 2-step encoder.
    assert record["results"]["linear"]["top_1"] > 0.5 and record["results"]["knn"]["top_1"] > 0.4


def test_distribution_shift_sets_when_prepared_and_how_to_prepare_them_when_not(pretrained,
                                                                              tmp_path):
    data_dir = tmp_path / "tfds"
    TinyShapes(data_dir=str(data_dir)).download_and_prepare()
    out = tmp_path / "eval"
    r = _evaluate(f"--checkpoint={pretrained}", "--eval=shifts", "--train_split=train[:1000]",
                  "--eval_split=test[:200]", "--shift_datasets=tiny_shapes,imagenet_a",
                  f"--shift_data_dir={data_dir}", f"--output_dir={out}")
    assert r.returncode == 0, r.stdout[-4000:]
    shifts = json.loads((out / "evaluation.json").read_text())["results"]["shifts"]
    # tiny_shapes' labels 0-2 are read as three of the ten Fashion-MNIST classes.
    assert shifts["tiny_shapes"]["num_examples"] == 90
    assert shifts["tiny_shapes"]["num_classes_used"] == 3
    assert 0.0 <= shifts["tiny_shapes"]["top_1"] <= 1.0
    assert "tfds build imagenet_a" in shifts["imagenet_a"]["skipped"]
    assert "| shifts | imagenet_a | not prepared |" in r.stdout
    r = _evaluate(f"--checkpoint={pretrained}", "--eval=shifts", "--train_split=train[:500]",
                  "--eval_split=test[:100]", "--shift_datasets=imagenet_r",
                  f"--shift_data_dir={data_dir}", f"--output_dir={tmp_path / 'none'}")
    assert r.returncode == 2, r.stdout[-3000:]
    assert "none of the distribution-shift datasets is prepared" in r.stdout
    assert "tfds build imagenet_r" in r.stdout


def test_what_cannot_be_evaluated_stops_with_the_reason(pretrained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _evaluate(f"--checkpoint={empty}")
    assert r.returncode == 2 and "No checkpoint in" in r.stdout, r.stdout[-2000:]
    r = _evaluate(f"--checkpoint={pretrained}", "--eval=linear,astrology")
    assert r.returncode == 2 and "unknown evaluation(s) ['astrology']" in r.stdout, r.stdout[-2000:]
    r = _evaluate(f"--checkpoint={pretrained}", "--dataset=fashion_mnistt")
    assert r.returncode == 2 and "Did you mean fashion_mnist" in r.stdout, r.stdout[-2000:]
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    for f in pretrained.glob("ckpt-2.*"):
        (lonely / f.name).write_bytes(f.read_bytes())
    r = _evaluate(f"--checkpoint={lonely / 'ckpt-2'}")
    assert r.returncode == 2 and "config.json is missing" in r.stdout, r.stdout[-2000:]
