"""JAX's default PRNG (threefry2x32) in numpy, and the BYOL reference's augmentation key tree.

The parity check uses this to regenerate, from the raw key stored in a golden file (`d/pp_key`),
every per-image decision that DeepMind's `augmentations.postprocess` drew, and then compares those
decisions with the recorded ones. The project itself never draws from this stream: its input
pipeline uses TF's stateless RNG (`common.augment.sample_view_decisions`), which cannot agree with
JAX's. This module is the bridge that lets a golden file be checked from its key alone.

Two stream layouts exist, selected by JAX's `jax_threefry_partitionable` flag (the default since
JAX 0.5; `meta_json` of a golden file records it):

  partitionable  split(k, n)[i]     = threefry(k, (0, i))             (both output words)
                 bits32(k, shape)[j] = y0 ^ y1 of threefry(k, (hi(j), lo(j))), j the flat index
  original       split(k, n)        = threefry(k, iota(2n)) reshaped (n, 2) (counts halved)
                 bits32(k, shape)    = threefry(k, iota(size)) (counts halved, odd sizes padded)

where threefry(k, (x0, x1)) is the Threefry-2x32 block cipher with 20 rounds (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011), applied element-wise to the count pair.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

_U32 = np.uint32
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = _U32(0x1BD11BDA)  # Threefry's key-schedule constant


def _rotl(x: np.ndarray, d: int) -> np.ndarray:
    return (x << _U32(d)) | (x >> _U32(32 - d))


def threefry2x32(key: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32, 20 rounds, on uint32 count pairs.

    Args:
      key: (2,) uint32.
      x0, x1: uint32 arrays of one shape (the two words of each count).

    Returns:
      (y0, y1), uint32 arrays of that shape: five groups of four rounds
      (x0 += x1; x1 = rotl(x1, r) ^ x0), each group followed by the injection of the key schedule
      k_{s+1}, k_{s+2} (+ s+1 in the second word), with k_2 = k_0 ^ k_1 ^ 0x1BD11BDA.
    """
    key = np.asarray(key, dtype=_U32)
    if key.shape != (2,):
        raise ValueError(f"a threefry key is 2 uint32 words, got shape {key.shape}.")
    ks = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
    with np.errstate(over="ignore"):
        y0 = np.asarray(x0, dtype=_U32) + ks[0]
        y1 = np.asarray(x1, dtype=_U32) + ks[1]
        for group in range(5):
            for r in _ROTATIONS[group % 2]:
                y0 = y0 + y1
                y1 = _rotl(y1, r) ^ y0
            y0 = y0 + ks[(group + 1) % 3]
            y1 = y1 + ks[(group + 2) % 3] + _U32(group + 1)
    return y0, y1


def _hash_flat(key: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """JAX's `threefry_2x32(key, counts)`: the flat counts are halved into the two words (an odd
    count gets a zero appended) and the two output halves concatenated back."""
    flat = np.asarray(counts, dtype=_U32).ravel()
    odd = flat.size % 2
    if odd:
        flat = np.concatenate([flat, np.zeros(1, _U32)])
    half = flat.size // 2
    y0, y1 = threefry2x32(key, flat[:half], flat[half:])
    out = np.concatenate([y0, y1])
    return (out[:-1] if odd else out).reshape(np.shape(counts))


def _iota_2x32(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit flat index of every element of `shape`, as (high, low) uint32 words."""
    idx = np.arange(math.prod(shape), dtype=np.uint64).reshape(shape)
    return (idx >> np.uint64(32)).astype(_U32), (idx & np.uint64(0xFFFFFFFF)).astype(_U32)


def fma_float32(a, b, c) -> np.ndarray:
    """a * b + c for float32 arrays, rounded once to float32 (round half to even), like a fused
    multiply-add.

    The product of two float32 values is exact in float64; the float64 sum is exact up to an error
    recovered by Knuth's two-sum. Rounding that sum to float32 can only go wrong (double rounding)
    when it lands exactly on a float32 midpoint while the exact value does not; there it is moved
    one float64 ulp towards the exact value first.
    """
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bv = s - p
    err = (p - (s - bv)) + (c - bv)
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    with np.errstate(invalid="ignore"):
        other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
        midpoint = (s != r64) & ((r64 + other.astype(np.float64)) / 2 == s)
    nudge = midpoint & (err != 0)
    s = np.where(nudge, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


class ThreefryPRNG:
    """`jax.random`'s split, bits, uniform and permutation on raw (2,) uint32 keys.

    Args:
      partitionable: JAX's `jax_threefry_partitionable` flag of the JAX that made the stream.
    """

    def __init__(self, partitionable: bool = True):
        self.partitionable = bool(partitionable)

    def split(self, key: np.ndarray, num: int = 2) -> np.ndarray:
        """`jax.random.split(key, num)`: (num, 2) uint32 keys."""
        key = np.asarray(key, dtype=_U32)
        if self.partitionable:
            hi, lo = _iota_2x32((num,))
            y0, y1 = threefry2x32(key, hi, lo)
            return np.stack([y0, y1], axis=-1)
        return _hash_flat(key, np.arange(2 * num, dtype=_U32)).reshape(num, 2)

    def bits32(self, key: np.ndarray, shape: Sequence[int] = ()) -> np.ndarray:
        """`jax.random.bits(key, shape, uint32)`."""
        key = np.asarray(key, dtype=_U32)
        shape = tuple(shape)
        if self.partitionable:
            if shape:
                hi, lo = _iota_2x32(shape)
            else:  # JAX uses the count (0, 0) for a scalar
                hi = lo = np.zeros((), _U32)
            y0, y1 = threefry2x32(key, hi, lo)
            return y0 ^ y1
        return _hash_flat(key, np.arange(math.prod(shape), dtype=_U32)).reshape(shape)

    def uniform(self, key: np.ndarray, shape: Sequence[int] = (), minval: float = 0.0,
                maxval: float = 1.0) -> np.ndarray:
        """`jax.random.uniform(key, shape, float32, minval, maxval)`.

        The top 23 bits become the mantissa of a float in [1, 2), so u = float - 1 in [0, 1);
        the result is max(minval, u * (maxval - minval) + minval) in float32, with the bounds
        first rounded to float32 and the multiply-add rounded once: XLA's CPU backend contracts
        it into a fused multiply-add, and separately rounded products miss the reference's
        factors by one ulp about one time in three.
        """
        bits = self.bits32(key, shape)
        u = ((bits >> _U32(9)) | _U32(0x3F800000)).view(np.float32) - np.float32(1.0)
        lo, hi = np.float32(minval), np.float32(maxval)
        return np.maximum(lo, fma_float32(u, hi - lo, lo)).astype(np.float32)

    def permutation(self, key: np.ndarray, n: int) -> np.ndarray:
        """`jax.random.permutation(key, n)`: arange(n) sorted by fresh 32-bit keys, repeated for
        ceil(3 ln n / ln(2^32 - 1)) rounds (one round for n <= 2^10); the sort is stable."""
        x = np.arange(n, dtype=np.int32)
        rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
        for _ in range(rounds):
            key, subkey = self.split(key, 2)
            sort_keys = self.bits32(subkey, (n,))
            x = x[np.argsort(sort_keys, kind="stable")]
        return x


def partitionable_from_meta(meta: Mapping) -> bool:
    """The threefry layout of a golden file from its `meta_json`: the recorded flag, else JAX's
    default for the recorded version (partitionable from 0.5 on).

    Raises:
      ValueError: neither the flag nor the JAX version is recorded.
    """
    if "threefry_partitionable" in meta:
        return bool(meta["threefry_partitionable"])
    version = str(meta.get("jax", ""))
    parts = version.split(".")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return (int(parts[0]), int(parts[1])) >= (0, 5)
    raise ValueError("meta_json records neither 'threefry_partitionable' nor a 'jax' version, so "
                     "the key's stream layout is unknown; add one of them to meta_json.")


def byol_postprocess_decisions(key: np.ndarray, batch_sizes: Sequence[int], cfg,
                               prng: ThreefryPRNG) -> list[np.ndarray]:
    """The per-image decisions of the BYOL reference's `augmentations.postprocess(inputs, key)`.

    The reference's key tree (as its augmentations.postprocess splits it): one key per view
    (split(key, n_views)); per view, one key per op (split(view, 4): flip, colour, blur, solarize);
    per image, split(op_key, B)[i]. Per image i:
      flip      _, f = split(k_i);                     flip = U(f) <= 0.5
      colour    a, t = split(k_i); perm, b, c, s, h, cj, gs = split(t, 7);
                apply = U(a) <= 1; jitter = apply & U(cj) <= p_jitter; gray = apply & U(gs) <= p_gray;
                order = permutation(perm, 4); delta_b = U(b, -b_max, b_max); f_c = U(c, 1-c, 1+c);
                f_s = U(s, 1-s, 1+s); delta_h = U(h, -h_max, h_max)
      blur      a, t = split(k_i); (sg,) = split(t, 1); sigma = U(sg, sigma_min, sigma_max);
                blur = U(a) <= p_blur[view]
      solarize  solarize = U(k_i) <= p_solarize[view]  (the per-image key itself)
    An op whose probability is 0 is not called by the reference (its flag is 0 and its draws are
    absent: sigma is then 0); an image whose jitter is off still reports its drawn factors.

    Args:
      key: (2,) uint32 raw key passed to `postprocess`.
      batch_sizes: images per view, in view order.
      cfg: a `common.augment.AugmentConfig` (probabilities, strengths, sigma range).
      prng: the stream layout.

    Returns:
      One float64 array (batch, 14) per view, columns `common.augment.DECISION_ROW_FIELDS`.
    """
    if len(batch_sizes) != 2:
        raise ValueError(f"the BYOL reference's postprocess has two views, got {len(batch_sizes)}.")
    if not cfg.flip:
        raise ValueError("the BYOL reference always flips with probability 0.5; cfg.flip is False.")
    view_keys = prng.split(key, len(batch_sizes))
    rows = []
    for view, (vkey, n) in enumerate(zip(view_keys, batch_sizes)):
        flip_key, color_key, blur_key, sol_key = prng.split(vkey, 4)
        out = np.zeros((n, 14), np.float64)
        for i, k in enumerate(prng.split(flip_key, n)):
            _, f = prng.split(k, 2)
            out[i, 0] = prng.uniform(f) <= 0.5
        for i, k in enumerate(prng.split(color_key, n)):
            a, t = prng.split(k, 2)
            perm, b, c, s, h, cj, gs = prng.split(t, 7)
            apply = prng.uniform(a) <= 1.0
            out[i, 1] = apply and prng.uniform(cj) <= np.float32(cfg.color_jitter_prob)
            out[i, 2] = apply and prng.uniform(gs) <= np.float32(cfg.grayscale_prob)
            out[i, 3:7] = prng.permutation(perm, 4)
            out[i, 7] = prng.uniform(b, (), -cfg.brightness, cfg.brightness)
            out[i, 8] = prng.uniform(c, (), 1 - cfg.contrast, 1 + cfg.contrast)
            out[i, 9] = prng.uniform(s, (), 1 - cfg.saturation, 1 + cfg.saturation)
            out[i, 10] = prng.uniform(h, (), -cfg.hue, cfg.hue)
        if cfg.blur_prob[view] > 0:
            for i, k in enumerate(prng.split(blur_key, n)):
                a, t = prng.split(k, 2)
                (sg,) = prng.split(t, 1)
                out[i, 11] = prng.uniform(a) <= np.float32(cfg.blur_prob[view])
                out[i, 12] = prng.uniform(sg, (), *cfg.blur_sigma)
        if cfg.solarize_prob[view] > 0:
            for i, k in enumerate(prng.split(sol_key, n)):
                out[i, 13] = prng.uniform(k) <= np.float32(cfg.solarize_prob[view])
        rows.append(out)
    return rows
