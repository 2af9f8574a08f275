"""Group d: augmentation ops with fixed factors, the fixed-order colour jitter, blur taps, and the
full per-view pipeline replayed from the decisions regenerated from the stored JAX key
(tools/jax_prng.py)."""
from __future__ import annotations

import json
import re
from typing import Callable

import numpy as np
import tensorflow as tf

from tools.parity.golden import number
from tools.parity.records import GroupRun, to_numpy
from tools.parity.tolerances import TOL_AD, Tol


_SINGLE_OP = re.compile(r"^d/(brightness|contrast|saturation|hue)_([pm]?[0-9.]+)$")
_BLUR = re.compile(r"^d/blur(\d+)_sigma([0-9.]+)$")
_TAPS = re.compile(r"^d/blur(\d+)_taps$")
_PP = re.compile(r"^d/pp_view(\d+)_out$")


def _per_image(fn: Callable, images: np.ndarray) -> np.ndarray:
    return np.stack([to_numpy(fn(tf.constant(x))) for x in images])


def group_d(run: GroupRun) -> None:
    from common.data import augment as A

    g = run.golden
    images = run.input("d/images")
    clip = lambda t: tf.clip_by_value(t, 0.0, 1.0)  # noqa: E731
    ops = {"brightness": A.adjust_brightness, "contrast": A.adjust_contrast,
           "saturation": A.adjust_saturation, "hue": A.adjust_hue}
    for key in g.keys("d/"):
        m = _SINGLE_OP.match(key)
        if m:
            op, factor = ops[m.group(1)], number(m.group(2))
            n = g[key].shape[0]
            run.check(key, _per_image(lambda x: clip(op(x, factor)), images[:n]), TOL_AD,
                      f"clip(augment.adjust_{m.group(1)}(x, {factor:g}))")
        m = _BLUR.match(key)
        if m:
            height, sigma = int(m.group(1)), float(m.group(2))
            n = g[key].shape[0]
            if images.shape[1] != height:
                raise ValueError(f"{key} is a {height} px blur but d/images are {images.shape[1]} px.")
            run.check(key, _per_image(lambda x: A.gaussian_blur(x, sigma, A.blur_kernel_size(height)),
                                      images[:n]), TOL_AD,
                      f"augment.gaussian_blur(sigma {sigma:g}, kernel {A.blur_kernel_size(height):g})")
    for key in ("d/grayscale", "d/solarize"):
        if key in g:
            fn = A.to_grayscale if key == "d/grayscale" else A.solarize
            run.check(key, _per_image(fn, images[:g[key].shape[0]]), TOL_AD, f"augment.{fn.__name__}")
    if "d/hsv" in g:
        hsv = A.rgb_to_hsv(tf.constant(images[0]))
        run.check("d/hsv", hsv, TOL_AD, "augment.rgb_to_hsv(images[0])")
        run.check("d/hsv_roundtrip", A.hsv_to_rgb(hsv), TOL_AD, "augment.hsv_to_rgb(rgb_to_hsv(images[0]))")

    if "d/jitter_fixed" in g:
        order = run.input("d/jitter_order")
        desc = g.describe("d/jitter_fixed") or ""
        m = re.search(r"b=([-+0-9.]+)\s+c=([-+0-9.]+)\s+s=([-+0-9.]+)\s+h=([-+0-9.]+)", desc)
        if m is None:
            reason = ("the fixed jitter factors are recorded only in the manifest's description "
                      "('b=... c=... s=... h=...'), which was not found")
            run.skip("d/jitter_fixed", reason)
            run.skip("d/jitter_fixed_gray", reason)
        else:
            b, c, s, h = (float(v) for v in m.groups())
            jitter = lambda x: A.color_jitter(x, order, b, c, s, h)  # noqa: E731
            n = g["d/jitter_fixed"].shape[0]
            label = f"augment.color_jitter(order {order.tolist()}, b {b:g}, c {c:g}, s {s:g}, h {h:g})"
            run.check("d/jitter_fixed", _per_image(lambda x: clip(jitter(x)), images[:n]), TOL_AD, label)
            run.check("d/jitter_fixed_gray",
                      _per_image(lambda x: clip(A.to_grayscale(jitter(x))), images[:n]), TOL_AD,
                      label + " + to_grayscale + clip")

    for key in g.keys("d/"):
        m = _TAPS.match(key)
        if not m:
            continue
        height = int(m.group(1))
        desc = g.describe(key) or ""
        sig = re.search(r"sigma in \[([^\]]*)\]", desc)
        if sig is None:
            run.skip(key, "the sigmas of the taps are recorded only in the manifest ('sigma in "
                          "[...]'), which was not found")
            continue
        sigmas = [float(v) for v in sig.group(1).split(",")]
        taps = np.stack([to_numpy(A.blur_taps(s, A.blur_kernel_size(height))) for s in sigmas])
        run.check(key, taps, TOL_AD, f"augment.blur_taps(sigma in {sigmas}, kernel {height / 10:g})")

    # The full per-view pipeline. The views take consecutive slices of d/images (view 1 first), as
    # the reference's call did. Their per-image decisions are regenerated from the stored key with
    # a numpy threefry (tools/jax_prng.py) and compared with the recorded ones; the pipeline then
    # replays the regenerated decisions, so the stored outputs are reached from the key alone.
    views = sorted(int(_PP.match(k).group(1)) for k in g.keys("d/") if _PP.match(k))
    drawn = _decisions_from_key(run, [g[f"d/pp_view{v}_decisions"].shape[0] for v in views],
                                image_size=images.shape[1]) if views else None
    start = 0
    worst = 0.0
    for i, v in enumerate(views):
        key = f"d/pp_view{v}_decisions"
        if drawn is None:
            rows = run.input(key)
            source = "the recorded decisions"
        else:
            rows = drawn[i]
            run.check(key, rows, TOL_AD, "tools.jax_prng.byol_postprocess_decisions(d/pp_key) with "
                                         "augment.byol_config()'s probabilities and ranges")
            source = "the decisions regenerated from d/pp_key"
        out_key = f"d/pp_view{v}_out"
        n = rows.shape[0]
        replay = np.stack([to_numpy(A.postprocess_from_decisions(tf.constant(images[start + j]), rows[j]))
                           for j in range(n)])
        run.check(out_key, replay, TOL_AD, f"augment.postprocess_from_decisions on "
                                           f"d/images[{start}:{start + n}], {source}")
        worst = max(worst, float(np.max(np.abs(replay.astype(np.float64) - g[out_key]))))
        start += n
    if "d/pp_replay_maxabsdiff" in g:
        run.check("d/pp_replay_maxabsdiff", np.float64(worst), Tol(atol=TOL_AD.atol),
                  "max |replay - stored output| of the project's replay (the reference's own replay "
                  "is the stored value)")


def _decisions_from_key(run: GroupRun, batch_sizes: list[int], image_size: int):
    """The reference's per-image decisions for each view, regenerated from `d/pp_key`; None (with
    `d/pp_key` listed as skipped) when the file has no key or does not say which threefry layout
    made it."""
    from common.data import augment as A
    from tools import jax_prng

    g = run.golden
    if "d/pp_key" not in g:
        return None
    try:
        meta = json.loads(str(g["meta_json"])) if "meta_json" in g else {}
        partitionable = jax_prng.partitionable_from_meta(meta)
    except ValueError as exc:
        run.skip("d/pp_key", f"the key's stream cannot be regenerated: {exc} The pipeline is "
                             "replayed from the recorded decisions instead.")
        return None
    key = run.input("d/pp_key")
    run.note(f"d/pp_key: threefry2x32 in {'partitionable' if partitionable else 'original'} layout "
             "(meta_json), reference key tree of augmentations.postprocess")
    return jax_prng.byol_postprocess_decisions(key, batch_sizes, A.byol_config(image_size),
                                               jax_prng.ThreefryPRNG(partitionable))
