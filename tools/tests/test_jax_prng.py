"""tools/jax_prng.py: JAX's threefry stream in numpy, checked against independent oracles.

* The Threefry-2x32 (20 rounds) known-answer vectors published with Random123 (Salmon et al. 2011).
* `split(PRNGKey(0))` as JAX printed it in both stream layouts (the original and the partitionable).
* `fma_float32` against exact rational arithmetic, including a constructed double-rounding case.
* The samplers' distributions: uniform (Kolmogorov-Smirnov, range) and permutation (chi-square
  over the 24 orders).
* The reference's stored augmentation decisions, regenerated from the stored key.
"""
from __future__ import annotations

import fractions
import pathlib

import numpy as np
import pytest
from scipy import stats

from tools import jax_prng

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tools" / "golden" / "byol_golden.npz"
KEY0 = np.array([0, 0], np.uint32)  # jax.random.PRNGKey(0)


@pytest.mark.parametrize("key, count, expected", [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_threefry2x32_known_answers(key, count, expected):
    y0, y1 = jax_prng.threefry2x32(np.array(key, np.uint32), np.uint32(count[0]), np.uint32(count[1]))
    assert (int(y0), int(y1)) == expected


def test_threefry2x32_is_elementwise():
    key = np.array([7, 11], np.uint32)
    x0 = np.arange(6, dtype=np.uint32).reshape(2, 3)
    x1 = x0[::-1] * np.uint32(1000)
    y0, y1 = jax_prng.threefry2x32(key, x0, x1)
    for idx in np.ndindex(x0.shape):
        one = jax_prng.threefry2x32(key, x0[idx], x1[idx])
        assert (y0[idx], y1[idx]) == (one[0], one[1])


def test_split_of_prngkey0_matches_jax_in_both_layouts():
    assert jax_prng.ThreefryPRNG(True).split(KEY0).tolist() == \
        [[1797259609, 2579123966], [928981903, 3453687069]]
    assert jax_prng.ThreefryPRNG(False).split(KEY0).tolist() == \
        [[4146024105, 967050713], [2718843009, 1272950319]]


def test_partitionable_split_and_bits_are_prefix_consistent():
    """In the partitionable layout element i depends only on i, not on the array's size."""
    prng = jax_prng.ThreefryPRNG(True)
    key = np.array([3, 1234], np.uint32)
    np.testing.assert_array_equal(prng.split(key, 7)[:3], prng.split(key, 3))
    np.testing.assert_array_equal(prng.bits32(key, (10,))[:4], prng.bits32(key, (4,)))
    np.testing.assert_array_equal(prng.bits32(key, (2, 3)).ravel(), prng.bits32(key, (6,)))


def _round_to_float32(value: fractions.Fraction) -> np.float32:
    """The float32 nearest to an exact rational, ties to even: the oracle for fma_float32."""
    guess = np.float32(float(value))
    cands = {guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))}
    def rank(c):
        mantissa_odd = int(np.array(c, np.float32).view(np.uint32)) & 1
        return abs(fractions.Fraction(float(c)) - value), mantissa_odd
    return min(cands, key=rank)


def test_fma_float32_rounds_once():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 2000).astype(np.float32)
    b = rng.uniform(-2, 2, 2000).astype(np.float32)
    c = rng.uniform(-1, 1, 2000).astype(np.float32)
    got = jax_prng.fma_float32(a, b, c)
    for x, y, z, r in zip(a, b, c, got):
        exact = fractions.Fraction(float(x)) * fractions.Fraction(float(y)) + fractions.Fraction(float(z))
        assert r == _round_to_float32(exact), (x, y, z)
    # The separately rounded product differs somewhere: the test distinguishes the two.
    assert np.any(got != (a * b + c))


def test_fma_float32_avoids_double_rounding():
    """a*b + c = 1 + 2^-23 + 2^-24 - 2^-70: just below the midpoint between 1 + 2^-23 (odd) and
    1 + 2^-22 (even). The float64 sum rounds onto the midpoint, and rounding that to float32 would
    pick the even neighbour; the exact value rounds down."""
    a = np.float32(1 + 2.0 ** -23)
    b = np.float32(2.0 ** -24 * (1 - 2.0 ** -23))
    c = np.float32(1 + 2.0 ** -23)
    naive = np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    got = jax_prng.fma_float32(a, b, c)
    assert got == np.float32(1 + 2.0 ** -23)
    assert naive == np.float32(1 + 2.0 ** -22)  # what a plain float64 detour gives


def test_uniform_is_uniform_on_its_range():
    prng = jax_prng.ThreefryPRNG(True)
    keys = prng.split(np.array([0, 42], np.uint32), 4000)
    draws = np.array([prng.uniform(k, (), -0.4, 0.4) for k in keys])
    assert draws.dtype == np.float32 and draws.min() >= -0.4 and draws.max() < 0.4
    assert stats.kstest(draws, stats.uniform(-0.4, 0.8).cdf).pvalue > 1e-3
    many = prng.uniform(np.array([5, 6], np.uint32), (4000,), 0.1, 2.0)
    assert stats.kstest(many, stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3


def test_permutation_is_a_uniform_permutation():
    prng = jax_prng.ThreefryPRNG(True)
    keys = prng.split(np.array([9, 9], np.uint32), 4800)
    orders = [tuple(prng.permutation(k, 4)) for k in keys]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    counts = np.unique(np.array(orders), axis=0, return_counts=True)[1]
    assert len(counts) == 24
    assert stats.chisquare(counts).pvalue > 1e-3


def test_layout_from_meta():
    assert jax_prng.partitionable_from_meta({"threefry_partitionable": False, "jax": "0.10.2"}) is False
    assert jax_prng.partitionable_from_meta({"jax": "0.4.30"}) is False
    assert jax_prng.partitionable_from_meta({"jax": "0.5.0"}) is True
    with pytest.raises(ValueError, match="threefry_partitionable"):
        jax_prng.partitionable_from_meta({"backend": "cpu"})


def test_reference_decisions_regenerate_from_the_stored_key():
    """The oracle: the decisions DeepMind's postprocess recorded (JAX 0.10.2, partitionable)."""
    from common.data import augment

    with np.load(GOLDEN) as g:
        key, want = g["d/pp_key"], [g["d/pp_view1_decisions"], g["d/pp_view2_decisions"]]
    got = jax_prng.byol_postprocess_decisions(key, [len(w) for w in want], augment.byol_config(64),
                                              jax_prng.ThreefryPRNG(True))
    for g_, w in zip(got, want):
        np.testing.assert_array_equal(g_, w)  # bit for bit, float32 factors included
    # The other layout draws other decisions from the same key.
    other = jax_prng.byol_postprocess_decisions(key, [len(w) for w in want], augment.byol_config(64),
                                                jax_prng.ThreefryPRNG(False))
    assert not all(np.array_equal(o, w) for o, w in zip(other, want))
