"""Python's ``random.Random(seed).sample``, replayed in compiled code.

The reference ABX tools subsample cells with ``random.sample``; reproducing their scores
means drawing exactly the same samples. Calling ``random.sample`` tens of thousands of
times from Python took 80 % of cell enumeration (0.18 of 0.23 s for 12,000 items), so the
draws are made here instead, from the generator's own state (``random.Random.getstate``,
public API): the Mersenne Twister MT19937 that CPython uses, ``getrandbits(k)`` for
``k <= 32`` (the top ``k`` bits of one 32-bit output), ``_randbelow`` (rejection sampling on
``n.bit_length()`` bits) and ``sample``'s two algorithms (a shrinking pool when the
population is small relative to ``k``, else rejection of repeats), as CPython 3.11-3.13
define them. Tests draw thousands of samples both ways and require identical results.
"""

from __future__ import annotations

import math
import random

import numpy as np
from numba import njit

_N, _M = 624, 397
_MATRIX_A, _UPPER, _LOWER = np.uint32(0x9908B0DF), np.uint32(0x80000000), np.uint32(0x7FFFFFFF)


def state_of(rng: random.Random) -> np.ndarray:
    """The generator's state as 624 uint32 words plus the position (the 625th entry)."""
    version, internal, _ = rng.getstate()
    if version != 3 or len(internal) != _N + 1:
        raise RuntimeError(f"unexpected random.Random state (version {version}); cannot replay its draws")
    return np.array(internal, dtype=np.uint32)


@njit(cache=True, nogil=True)
def _twist(mt):
    for k in range(_N):
        y = (mt[k] & _UPPER) | (mt[(k + 1) % _N] & _LOWER)
        value = mt[(k + _M) % _N] ^ (y >> np.uint32(1))
        if y & np.uint32(1):
            value ^= _MATRIX_A
        mt[k] = value


@njit(cache=True, nogil=True)
def next_uint32(state):
    """The next 32-bit output (CPython's ``genrand_uint32``); advances ``state``."""
    if state[_N] >= _N:
        _twist(state[:_N])
        state[_N] = 0
    y = state[state[_N]]
    state[_N] += 1
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y


@njit(cache=True, nogil=True)
def _bit_length(n):
    bits = 0
    while n:
        n >>= 1
        bits += 1
    return bits


@njit(cache=True, nogil=True)
def randbelow(state, n):
    """``random.Random._randbelow(n)`` for ``1 <= n < 2**32``."""
    shift = np.uint32(32 - _bit_length(n))
    r = next_uint32(state) >> shift
    while r >= n:
        r = next_uint32(state) >> shift
    return np.int64(r)


@njit(cache=True, nogil=True)
def sample_indices(state, n, k, out):
    """``random.Random.sample(range(n), k)`` into ``out[:k]``."""
    setsize = 21
    if k > 5:
        setsize += 4 ** int(math.ceil(math.log(k * 3) / math.log(4)))
    if n <= setsize:
        pool = np.arange(n)
        for i in range(k):
            j = randbelow(state, n - i)
            out[i] = pool[j]
            pool[j] = pool[n - i - 1]
    else:
        for i in range(k):
            j = randbelow(state, n)
            repeated = True
            while repeated:
                repeated = False
                for previous in range(i):
                    if out[previous] == j:
                        repeated = True
                        j = randbelow(state, n)
                        break
            out[i] = j
