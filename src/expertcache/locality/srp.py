"""SRP, Segment Routing best Performance, with breakdowns and bootstrap intervals.

Everything derives from histograms h[c] = number of (window, expert) pairs whose window of
m tokens routed c tokens to the expert (c = 0..m), pooled over whatever a breakdown pools:
matches(tau) = sum_{c>=tau} c h[c], predictions(tau) = m sum_{c>=tau} h[c],
activations = matches(0), F1(tau) = 2 matches / (predictions + activations).

Shape key: S sequences, L MoE layers, E experts, P window start positions, M = m + 1 counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checks import check_seed
from ..errors import ExpertcacheError
from ..trace import Trace, open_trace
from ._streams import blocks, layer_ids, parallel_map
from ._windows import window_hists
from .bootstrap import RESAMPLES, basic_interval, check_resamples, resample_counts, resampled_sums
from .study_cache import segment_lengths

__all__ = ["BREAKDOWNS", "DEFAULT_M", "SRPReport", "SRPValue", "WindowStats", "best_f1", "srp", "window_stats"]

DEFAULT_M = (4, 16, 64, 256)
BREAKDOWNS = ("expert", "domain", "position")


@dataclass(frozen=True)
class SRPValue:
    """SRP of one pooled group: best F1, its threshold, group size relative to activations."""

    srp: float
    ci: tuple[float, float] | None
    threshold: int | None
    group_ratio: float
    activation_ratio: float

    def to_json(self) -> dict:
        return {
            "srp": _num(self.srp),
            "ci": None if self.ci is None else [_num(v) for v in self.ci],
            "threshold": self.threshold,
            "group_ratio": _num(self.group_ratio),
            "activation_ratio": _num(self.activation_ratio),
        }


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


@dataclass
class WindowStats:
    """Count histograms of one segment length, the sufficient statistics of every breakdown."""

    m: int
    per_sequence: np.ndarray  # [S, L, M] summed over experts
    per_expert: np.ndarray  # [L, E, M] summed over sequences
    per_position: np.ndarray | None = field(default=None)  # [P, M] over sequences, layers, experts


def window_stats(trace: Trace, m_values, *, positions: bool = False, shuffle=None, progress=None) -> dict[int, WindowStats]:
    """One read of the trace: window histograms for every m (see `_windows.window_hists`)."""
    m_values = segment_lengths(m_values)
    S, L = trace.num_sequences, trace.num_moe_layers
    sizes = trace.model.num_experts
    E = max(sizes)
    pad = trace.pad_id
    longest = int(trace.seq_lengths.max())
    out = {}
    for m in m_values:
        # m beyond every sequence: no window, histograms of zeros whatever their width (so m = 10^12 allocates nothing)
        M = m + 1 if m <= longest else 1
        per_position = np.zeros((max(longest - m + 1, 0), M), np.int64) if positions else None
        out[m] = WindowStats(m, np.zeros((S, L, M), np.int32), np.zeros((L, E, M), np.int64), per_position)
    for block in blocks(trace, shuffle=shuffle):
        def one(task):
            l, st = task
            windows = st.per_position.shape[0] if positions else 0
            seq, expert, pos = window_hists(layer_ids(block.experts, l, pad), block.seq_offsets, sizes[l], st.m, windows)
            st.per_sequence[block.seq_start:block.seq_stop, l] = seq
            st.per_expert[l, :sizes[l]] += expert  # each task owns its (m, layer) slices
            return pos

        tasks = [(l, st) for l in range(L) for st in out.values() if st.m <= longest]
        for (l, st), pos in zip(tasks, parallel_map(one, tasks)):
            if positions and len(pos):
                st.per_position += pos
        if progress is not None:
            progress(block.seq_stop)
    return out


def best_f1(hist: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SRP, best threshold and relative group size of count histograms [..., m + 1].

    F1(tau) is undefined where predictions + activations = 0 (no windows, or an expert never
    routed at tau >= 1) and skipped; SRP is NaN (threshold -1) when it is nowhere defined.
    Ties go to the smallest tau.
    """
    h = hist.astype(np.float64)
    c = np.arange(hist.shape[-1], dtype=np.float64)  # m + 1, or 1 for the empty histograms of an m without windows
    matches = np.flip(np.cumsum(np.flip(h * c, -1), -1), -1)  # [..., M]
    predictions = m * np.flip(np.cumsum(np.flip(h, -1), -1), -1)  # [..., M]
    activations = matches[..., :1]
    denominator = predictions + activations
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * matches / np.where(denominator > 0, denominator, 1), -np.inf)
        tau = np.argmax(f1, axis=-1)
        value = np.take_along_axis(f1, tau[..., None], -1)[..., 0]
        defined = np.isfinite(value)
        group = np.take_along_axis(predictions, tau[..., None], -1)[..., 0] / activations[..., 0]
    group = np.where(defined & (activations[..., 0] > 0), group, np.nan)  # undefined without activations
    return np.where(defined, value, np.nan), np.where(defined, tau, -1), group


def _values(hist, m, ratio, ci=None) -> list[SRPValue]:
    value, tau, group = best_f1(hist, m)
    ratio = np.broadcast_to(ratio, value.shape)
    return [SRPValue(float(v), None if ci is None or not np.isfinite(ci[i]).all() else (float(ci[i, 0]), float(ci[i, 1])),
                     int(t) if t >= 0 else None, float(g), float(r))
            for i, (v, t, g, r) in enumerate(zip(value.ravel(), tau.ravel(), group.ravel(), ratio.ravel()))]


_CHUNK_VALUES = 1 << 18  # resampled sums held at once (2 MiB; F1 needs ~8 such temporaries)


def _interval(per_sequence: np.ndarray, m: int, resamples: int, seed) -> np.ndarray:
    """[G, 2] basic bootstrap interval of SRP per group from per-sequence histograms [S, G, M]."""
    S, G, M = per_sequence.shape
    estimate = best_f1(per_sequence.sum(axis=0, dtype=np.int64), m)[0]  # [G]
    counts = resample_counts(S, resamples, seed)  # [B, S]
    replicates = np.empty((resamples, G))
    step = max(1, _CHUNK_VALUES // (resamples * M))
    for g in range(0, G, step):
        replicates[:, g:g + step] = best_f1(resampled_sums(per_sequence[:, g:g + step], counts), m)[0]
    return basic_interval(estimate, replicates)


@dataclass(frozen=True)
class SRPReport:
    """SRP for several segment lengths: `results[m]` maps breakdown name to SRPValue(s)."""

    m: tuple[int, ...]
    results: dict[int, dict]

    def to_json(self) -> dict:
        def encode(v):
            if isinstance(v, SRPValue):
                return v.to_json()
            if isinstance(v, dict):
                return {k: encode(x) for k, x in v.items()}
            return [encode(x) for x in v]

        return {str(m): encode(r) for m, r in self.results.items()}


def check_breakdowns(by) -> tuple[str, ...]:
    by = (by,) if isinstance(by, str) else tuple(by)
    for name in by:
        if name not in BREAKDOWNS:
            raise ExpertcacheError(f"unknown SRP breakdown {name!r}; choose from {', '.join(BREAKDOWNS)}")
    return by


def summarize(trace: Trace, stats: WindowStats, by=(), *, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Breakdowns of one segment length; intervals for model, layers and domains."""
    m = stats.m
    sizes = np.asarray(trace.model.num_experts, np.float64)
    k = trace.top_k
    layer_ratio = k / sizes  # [L]
    model_ratio = k * len(sizes) / sizes.sum()
    per_seq = stats.per_sequence  # [S, L, M]
    whole = per_seq.sum(axis=1, dtype=np.int64)  # [S, M]
    # model and layers share the draws of seed (seed, m); one sequence has no interval: every
    # resample would be that sequence, and [est, est] would pose as certainty
    interval = resamples > 0 and len(whole) > 1
    out = {
        "model": _values(whole.sum(axis=0), m, model_ratio,
                         _interval(whole[:, None], m, resamples, [seed, m]) if interval else None)[0],
        "per_layer": _values(per_seq.sum(axis=0, dtype=np.int64), m, layer_ratio,
                             _interval(per_seq, m, resamples, [seed, m]) if interval else None),
    }
    if "expert" in by:
        out["per_expert"] = [_values(stats.per_expert[l, :int(e)], m, layer_ratio[l]) for l, e in enumerate(sizes)]
    if "domain" in by:
        out["per_domain"] = {}
        for d, name in enumerate(trace.domains):
            rows = whole[trace.seq_domain == d]  # [S_d, M]
            if len(rows) == 0:
                continue
            dci = _interval(rows[:, None], m, resamples, [seed, m, d + 1]) if resamples > 0 and len(rows) > 1 else None
            out["per_domain"][name] = _values(rows.sum(axis=0), m, model_ratio, dci)[0]
    if "position" in by:
        out["per_position"] = _values(stats.per_position, m, model_ratio) if stats.per_position is not None else []
    return out


def srp(trace: Trace, m=DEFAULT_M, by=(), *, seed: int = 0, resamples: int = RESAMPLES, progress=None) -> SRPReport:
    """SRP(m) for each segment length, "model" and "per_layer" always, plus `by` breakdowns
    ("expert", "domain", "position"). Intervals: basic bootstrap over sequences, `resamples`
    draws seeded by (seed, m) (0 resamples: no interval)."""
    trace = open_trace(trace)
    m_values = segment_lengths(m)
    by = check_breakdowns(by)
    resamples = check_resamples(resamples)
    seed = check_seed(seed)
    stats = window_stats(trace, m_values, positions="position" in by, progress=progress)
    return SRPReport(tuple(stats), {m: summarize(trace, st, by, seed=seed, resamples=resamples) for m, st in stats.items()})
