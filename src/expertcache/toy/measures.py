"""The study's figures of one traced model, each beside its chance level.

Locality (SRP with its interval, SCH at 2x, consecutive overlap, each with its chance level)
is read from `expertcache analyze`'s summary.json, so the report can be recomputed with that
command. What analyze does not give is computed here with the same locality functions:
- an interval for SCH(m) at 2x: the model-level hit rate is the mean of per-sequence hit rates
  (equal-length sequences, a cache emptied at each one), bootstrapped over sequences as SRP is;
- chance levels of balance and specialization, each on a trace with one link broken:
  local balance with tokens shuffled inside each sequence (global balance is order-free, its
  own chance level), domain specialization with domain labels permuted across sequences,
  vocabulary specialization with token ids permuted across all positions.

Shape key: S sequences, N tokens, L MoE layers, K top-k.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..locality import curves, domain_specialization, local_balance, vocabulary_specialization
from ..locality.bootstrap import basic_interval, resample_counts
from ..trace import Trace

__all__ = ["LOCAL_M", "SCH_M", "measure"]

SCH_M = 16
LOCAL_M = 16
SEED = 0


def measure(trace: Trace, analysis: Path, resamples: int = 1000) -> dict:
    """Every figure of the report for one model (see the module doc)."""
    summary = json.loads((analysis / "summary.json").read_text())
    sch = summary["model_level_hit_rate_2x"][f"fsf_m{SCH_M}"]
    balance = _rows(analysis / "balance.csv")
    domains = _rows(analysis / "domains.csv")
    vocabulary = _rows(analysis / "vocabulary.csv")
    return {
        "srp": summary["srp"],
        "sch_2x": sch | {"ci": _sch_interval(trace, sch["cache_size"], resamples)},
        "overlap": summary["consecutive_overlap"],
        "global_balance": _mean(r["balance"] for r in balance if r["window"] == "0"),
        "local_balance": {"observed": _mean(r["balance"] for r in balance if r["window"] == str(LOCAL_M)),
                          "chance": float(np.nanmean(local_balance(_shuffled_tokens(trace), [LOCAL_M])[LOCAL_M][:, 0]))},
        "domain_specialization": {"observed": _mean(r["specialization"] for r in domains if r["domain"] == trace.domains[0]),
                                  "chance": _domain_spec(_permuted_domains(trace))},
        "vocabulary_specialization": {"observed": _mean(r["share"] for r in vocabulary
                                                        if r["kind"] == "input" and r["expert"] == "-1"),
                                      "chance": _vocab_spec(_permuted_tokens(trace))},
        "trace": summary["trace"],
    }


def _rows(path: Path) -> list[dict]:
    """A table of analyze's; none where analyze skipped it (summary.json says why): its figures are NaN."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _mean(values) -> float:
    finite = [float(v) for v in values if v not in ("", None) and np.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def _sch_interval(trace: Trace, cache_size: int, resamples: int) -> list[float]:
    per_sequence = np.array([curves(trace.select([s]), "fsf", SCH_M).model_level[cache_size - 1]
                             for s in range(trace.num_sequences)])  # [S]
    estimate = per_sequence.mean()
    counts = resample_counts(len(per_sequence), resamples, SEED)  # [B, S]
    replicates = counts @ per_sequence / len(per_sequence)  # [B]
    return [float(v) for v in basic_interval(np.asarray(estimate), replicates)]


def _sequences(trace: Trace, name: str) -> list[np.ndarray]:
    values = getattr(trace, name)
    return [np.asarray(values[trace.sequence(s)]) for s in range(trace.num_sequences)]


def _rebuilt(trace: Trace, experts, tokens, domains) -> Trace:
    return Trace.from_arrays(experts, trace.num_experts, tokens=tokens, domains=domains)


def _names(trace: Trace) -> list[str]:
    return [trace.domains[int(d)] for d in trace.seq_domain]


def _shuffled_tokens(trace: Trace) -> Trace:
    rng = np.random.default_rng(SEED)
    experts = [e[rng.permutation(len(e))] for e in _sequences(trace, "experts")]  # each [T, L, K]
    return _rebuilt(trace, experts, None, _names(trace))


def _permuted_domains(trace: Trace) -> Trace:
    names = _names(trace)
    order = np.random.default_rng(SEED).permutation(len(names))
    return _rebuilt(trace, _sequences(trace, "experts"), None, [names[i] for i in order])


def _permuted_tokens(trace: Trace) -> Trace:
    tokens = np.asarray(trace.tokens)
    shuffled = tokens[np.random.default_rng(SEED).permutation(len(tokens))]  # [N]
    pieces = np.split(shuffled, trace.seq_offsets[1:-1])
    return _rebuilt(trace, _sequences(trace, "experts"), pieces, _names(trace))


def _domain_spec(trace: Trace) -> float:
    return float(np.nanmean(domain_specialization(trace)[1]))


def _vocab_spec(trace: Trace) -> float:
    return _mean(r["share"] for r in vocabulary_specialization(trace, kinds=("input",)) if r["expert"] == -1)
