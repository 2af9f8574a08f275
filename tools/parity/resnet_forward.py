"""Group e: haiku ResNet-18/50 forward passes (training, then eval mode with the updated BN state),
weights rebuilt from their haiku names."""
from __future__ import annotations

import re
import zlib

import numpy as np
import tensorflow as tf

from tools.parity.records import GroupRun
from tools.parity.tolerances import EXACT, TOL_R18, TOL_R50


def golden_weight(key: str, shape) -> np.ndarray:
    """Group e's weight for haiku key '<module>/<param>': an rng seeded with crc32 of the key;
    w ~ N(0, 2 / fan_in) with fan_in = prod(shape[:-1]), BN scale ~ U[0.5, 1.5), offset ~ U[-0.2, 0.2);
    float32. Draws fill the array in C order, so haiku's (1, 1, 1, C) and our (C,) get the same values."""
    r = np.random.default_rng(zlib.crc32(key.encode()))
    leaf = key.rsplit("/", 1)[1]
    shape = tuple(shape)
    if leaf == "w":
        value = r.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif leaf == "scale":
        value = r.uniform(0.5, 1.5, shape)
    elif leaf == "offset":
        value = r.uniform(-0.2, 0.2, shape)
    else:
        raise ValueError(f"no weight rule for haiku parameter {key!r} (expected w, scale or offset).")
    return value.astype(np.float32)


def group_e(run: GroupRun) -> None:
    from common.data import augment as A
    from common.networks import layers
    from common.networks import resnet as resnet_lib
    from tools import haiku_params

    g = run.golden
    tags = sorted({m.group(1) for k in g.keys("e/")
                   for m in [re.match(r"^e/([a-z0-9]+)_train_embedding$", k)] if m})
    if not tags:
        raise KeyError("no 'e/<tag>_train_embedding' arrays in the file.")
    calib = tf.constant(A.normalize(tf.constant(run.input("e/calib_images"))))
    test = tf.constant(A.normalize(tf.constant(run.input("e/test_images"))))
    for tag in tags:
        state_prefix = f"e/{tag}_state1/"
        state_keys = sorted(g.tree(state_prefix))
        prefix = haiku_params.encoder_prefix_of(state_keys)
        m = re.match(r"^res_net(\d+)/~/$", prefix)
        if m is None:
            raise ValueError(f"group e's {tag} state uses prefix {prefix!r}; expected 'res_net<depth>/~/'.")
        depth = int(m.group(1))
        tol = TOL_R50 if depth >= 50 else TOL_R18
        stem = g[f"{state_prefix}{prefix}initial_batchnorm/~/mean_ema/average"].shape[-1]
        cfg = resnet_lib.deepmind_resnet18(depth=depth, width_multiplier=stem / 64)
        net = resnet_lib.ResNet(cfg, name=f"golden_{tag}")
        pmap = resnet_lib.haiku_param_map(net, prefix=prefix)
        counters = {v.ref(): v for k, v in pmap.items() if k.endswith("/counter")}
        if f"e/{tag}_init_state_counter_example" in g:
            init = {int(v.numpy()) for v in counters.values()}
            run.check(f"e/{tag}_init_state_counter_example", init.pop() if len(init) == 1 else -1,
                      EXACT, "BN counter of the freshly built network")
        for key, var in pmap.items():
            if not haiku_params.is_state_key(key):
                var.assign(golden_weight(key, var.shape.as_list()))
        if f"e/{tag}_num_params" in g:
            run.check(f"e/{tag}_num_params", layers.count_params(net), EXACT, "layers.count_params")
        train = net(calib, training=True)
        run.check(f"e/{tag}_train_embedding", train, tol,
                  f"ResNet-{depth} x{cfg.width_multiplier:g}, training mode")
        for rest in state_keys:
            if rest not in pmap:
                raise KeyError(f"{state_prefix}{rest} has no variable in the project's ResNet-{depth}.")
            run.check(state_prefix + rest, pmap[rest].numpy(), tol, "BN EMA average after one call")
        after = {int(v.numpy()) for v in counters.values()}
        if f"e/{tag}_counter1" in g:
            run.check(f"e/{tag}_counter1", after.pop() if len(after) == 1 else -1, EXACT,
                      f"every BN counter ({len(counters)} BNs) after one training call")
        evaluated = net(test, training=False)
        run.check(f"e/{tag}_eval_embedding", evaluated, tol, "eval mode with the updated state")
        run.check(f"e/{tag}_eval_embedding_calib", net(calib, training=False), tol,
                  "eval mode on the calibration images")
        for name, got in (("train_embedding", train), ("eval_embedding", evaluated)):
            key64 = f"e64/{tag}_{name}"
            if key64 in g.f64:
                run.check_extra(f"{key64} (float64 file)", got.numpy(), g.f64[key64], tol,
                                "the same network in float64")
        del net
