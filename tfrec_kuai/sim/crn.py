"""Common random numbers: uniforms that are a pure function of their keys.

A paired A/B test compares arms on the *same* users with the *same* luck: the uniform that decides
whether user 17 skips the 5th video of her 2nd visit on day 1 must be the same whichever arm
chose that video. A sequential generator cannot give that (an arm that shows one more video
shifts every later draw), so every draw here is a counter-based hash (SplitMix64) of
``(seed, purpose, user, day, visit, position, slot)``, vectorised over rows in NumPy.

:class:`Stream` hands out successive slots per row with the methods of ``numpy.random.Generator``
that the behaviour model calls (``random``, ``integers``, ``exponential``, ``poisson``), so
``behaviour.draw_outcomes`` runs on it unchanged: a reaction is a deterministic function of the
video, the user's state and these uniforms.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0 ** -53


def _mix(x):
    """SplitMix64's finaliser (wrapping uint64 arithmetic; a bijection with good avalanche)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def key_hash(*keys):
    """One uint64 per row for integer keys (scalars or arrays, broadcast): the stream's origin."""
    arrays = np.broadcast_arrays(*[np.asarray(k, np.int64) for k in keys])
    h = np.full(arrays[0].shape, 0x243F6A8885A308D3, np.uint64)
    with np.errstate(over="ignore"):
        for k in arrays:
            h = _mix(h + _GOLDEN + k.astype(np.uint64))
    return h


def uniforms(*keys):
    """Uniform [0, 1) doubles, one per row of the broadcast keys."""
    return (key_hash(*keys) >> np.uint64(11)).astype(np.float64) * _TO_UNIT


class Stream:
    """Successive uniforms per row, starting at ``key_hash(*keys)``; duck-types the parts of
    ``numpy.random.Generator`` the behaviour model uses. ``size`` is ``n`` (one draw per row) or
    ``(k, n)`` (k draws per row, rows along the last axis), n = the number of rows."""

    def __init__(self, *keys):
        self.origin = key_hash(*keys).ravel()
        self.slot = 0

    def __len__(self):
        return len(self.origin)

    def random(self, size=None):
        n = len(self.origin)
        k = 1 if size is None or np.ndim(size) == 0 else int(size[0])
        if size is not None and np.ndim(size) == 0 and int(size) != n:
            raise ValueError(f"a Stream of {n} rows cannot give {size} draws")
        slots = np.arange(self.slot + 1, self.slot + 1 + k, dtype=np.uint64)[:, None]
        self.slot += k
        with np.errstate(over="ignore"):
            h = _mix(self.origin[None, :] + slots * _GOLDEN)
        u = (h >> np.uint64(11)).astype(np.float64) * _TO_UNIT
        return u[0] if size is None or np.ndim(size) == 0 else u

    def integers(self, low, high, size=None):
        return (low + np.floor(self.random(size) * (high - low))).astype(np.int64)

    def exponential(self, scale=1.0, size=None):
        return -np.log1p(-self.random(size)) * scale

    def poisson(self, lam, size=None):
        """Inverse-CDF Poisson draws (one uniform each), ``lam`` scalar or per row."""
        u = self.random(size)
        lam = np.broadcast_to(np.asarray(lam, np.float64), u.shape)
        k = np.zeros(u.shape, np.int64)
        p = np.exp(-lam)
        cdf = p.copy()
        more = u > cdf
        j = 0
        while more.any() and j < 1000:
            j += 1
            p = p * lam / j
            cdf = cdf + p
            k += more
            more &= u > cdf
        return k
