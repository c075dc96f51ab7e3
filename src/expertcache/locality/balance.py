"""Load balance, global and local, as normalized entropy and coefficient of variation.

For loads n_e >= 0 over E experts with N = sum n_e > 0 and p_e = n_e / N:
- balance = H(p) / log E, H(p) = -sum p_e log p_e (1 = perfectly even, 0 = one expert; 1 when E = 1),
- cv = std(n) / mean(n) over all E experts (population std; 0 = perfectly even).
Global: the loads of a layer over the whole trace. Local(m): the same for the loads inside
every window of m consecutive tokens of a sequence (all T - m + 1 starts), averaged over
windows with at least one activation. A window holds m*k activations, so when m*k < E even a
perfectly spread window has balance log(m*k) / log E: compare with the chance level.

Shape key: n tokens of a block, K top-k, L MoE layers, E experts.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..trace import Trace
from ._streams import blocks, layer_ids, parallel_map
from .study_cache import segment_lengths

__all__ = ["balance_of", "global_balance", "local_balance"]


def balance_of(loads: np.ndarray) -> tuple[float, float]:
    """(normalized entropy, cv) of one load vector [E]."""
    loads = np.asarray(loads, np.float64)
    E, total = len(loads), loads.sum()
    if total <= 0:
        return float("nan"), float("nan")
    p = loads[loads > 0] / total
    entropy = float(-(p * np.log(p)).sum() / math.log(E)) if E > 1 else 1.0
    return entropy, float(loads.std() / loads.mean())


def global_balance(trace: Trace) -> np.ndarray:
    """[L, 2] (balance, cv) of each layer's loads over the whole trace."""
    L = trace.num_moe_layers
    loads = [np.zeros(e, np.int64) for e in trace.model.num_experts]
    for block in blocks(trace):
        for l in range(L):
            ids = block.experts[:, l, :]
            loads[l] += np.bincount(ids[ids != trace.pad_id].astype(np.int64), minlength=len(loads[l]))[:len(loads[l])]
    return np.array([balance_of(x) for x in loads])


@numba.njit(cache=True)
def _xlogx(c):
    return c * math.log(c) if c > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def _window_balance(ids, seq_offsets, n_experts, m):
    """Sums over windows of (balance, cv) and the number of windows with activations.

    Keeps sum c, sum c^2 and sum c log c of the window's counts up to date as it slides.
    """
    log_e = math.log(n_experts) if n_experts > 1 else 1.0
    counts = np.zeros(n_experts, np.int64)
    sum_balance = 0.0
    sum_cv = 0.0
    windows = 0
    for j in range(seq_offsets.shape[0] - 1):
        a = seq_offsets[j]
        W = seq_offsets[j + 1] - a - m + 1
        if W <= 0:
            continue
        counts[:] = 0
        s1 = 0
        s2 = 0
        sl = 0.0
        for w in range(W):
            for t in range(a if w == 0 else a + w + m - 1, a + w + m):  # tokens entering
                for i in range(ids.shape[1]):
                    e = ids[t, i]
                    if e >= 0:
                        c = counts[e]
                        sl += _xlogx(c + 1) - _xlogx(c)
                        s2 += 2 * c + 1
                        s1 += 1
                        counts[e] = c + 1
            if s1 > 0:
                entropy = (math.log(s1) - sl / s1) / log_e if n_experts > 1 else 1.0
                mean = s1 / n_experts
                var = max(s2 / n_experts - mean * mean, 0.0)
                sum_balance += entropy
                sum_cv += math.sqrt(var) / mean
                windows += 1
            for i in range(ids.shape[1]):  # token a + w leaves before the next window
                e = ids[a + w, i]
                if e >= 0:
                    c = counts[e]
                    sl += _xlogx(c - 1) - _xlogx(c)
                    s2 -= 2 * c - 1
                    s1 -= 1
                    counts[e] = c - 1
    return sum_balance, sum_cv, windows


def local_balance(trace: Trace, m_values) -> dict[int, np.ndarray]:
    """{m: [L, 2] (balance, cv) averaged over every window of m tokens}."""
    m_values = segment_lengths(m_values)  # the kernel reads past a sequence for m < 1
    L = trace.num_moe_layers
    sums = {m: np.zeros((L, 3)) for m in m_values}
    for block in blocks(trace):
        def one(task):
            l, m = task
            sums[m][l] += _window_balance(layer_ids(block.experts, l, trace.pad_id), block.seq_offsets,
                                          trace.model.num_experts[l], m)  # each task owns its row

        parallel_map(one, [(l, m) for l in range(L) for m in m_values])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {m: s[:, :2] / s[:, 2:] for m, s in sums.items()}
