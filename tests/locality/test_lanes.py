"""The vector intrinsics (_lanes): the 8-key Mattson update against the scalar rule it replaces,
and the 64-entry compare against numpy."""

import numba
import numpy as np
import pytest

from expertcache.locality._lanes import below_mask, mattson_block


@numba.njit
def _block(key, start, carry, n):
    return mattson_block(key, start, carry, n)


@numba.njit
def _below(values, start, c):
    return below_mask(values, start, c)


def test_a_block_follows_the_running_minimum_rule():
    rng = np.random.default_rng(3)
    extremes = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 1], np.int64)
    for trial in range(3000):
        size = int(rng.integers(8, 30))
        pool = extremes if trial % 5 == 0 else np.arange(-20, 20, dtype=np.int64)  # ties and extremes too
        key = rng.choice(pool, size)
        start, n = int(rng.integers(0, size - 7)), int(rng.integers(0, 9))
        carry = int(rng.choice(pool))
        want, running = key.copy(), carry
        for j in range(start, start + n):  # each key keeps the larger of itself and the minimum above it
            want[j] = max(key[j], running)
            running = min(running, key[j])
        got = key.copy()
        assert _block(got, start, carry, n) == running
        np.testing.assert_array_equal(got, want)  # lanes from n on, and the rest, unchanged


def test_a_block_past_the_end_of_the_keys_is_an_index_error():
    key = np.arange(10, dtype=np.int64)
    assert _block(key, 2, 0, 3) == 0  # the last 8 keys fit
    for start in (3, 9, -1):
        with pytest.raises(IndexError, match="do not fit"):
            _block(key, start, 0, 1)
    np.testing.assert_array_equal(key, np.arange(10))


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_the_mask_says_which_of_64_entries_lie_below_a_value(dtype):
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    for trial in range(500):
        values = rng.integers(-3, 4, 100).astype(dtype) if trial % 2 else rng.integers(info.min, info.max, 100, dtype=dtype)
        if trial % 7 == 0:
            values[rng.integers(0, 100, 5)] = info.max  # the kernel's "no class" marker
        start, c = int(rng.integers(0, 37)), dtype(rng.choice(values))
        want = sum(1 << i for i in range(64) if values[start + i] < c)
        assert int(_below(values, start, c)) == want


def test_64_entries_past_the_end_are_an_index_error():
    values = np.zeros(70, np.int16)
    assert _below(values, 6, np.int16(1)) == 2**64 - 1  # the last 64 fit
    for start in (7, 69, -1):
        with pytest.raises(IndexError, match="do not fit"):
            _below(values, start, np.int16(1))
