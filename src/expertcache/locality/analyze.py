"""`analyze`: every locality metric of a trace as tidy tables plus a summary that leads with
each figure's excess over its chance level (docs/metrics.md describes every column).

Tables (Parquet and CSV, one row per value): curves, srp, overlap, balance, vocabulary,
domains; a table the trace cannot fill (no token ids, one domain, no defined value) is not
written, and summary.json says why under "skipped". summary.json holds the headline figures:
SCH at 2x the active experts, SRP and consecutive overlap, each as {"excess", "observed", "chance"}.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..atomic import output_folder, staged_files, write_json_atomic
from ..checks import check_seed
from ..errors import ExpertcacheError
from ..trace import Trace
from .balance import global_balance, local_balance
from .bootstrap import check_resamples
from .chance import DEFAULT_PERMUTATIONS, chance_curves, chance_overlap, chance_srp, check_permutations
from .overlap import consecutive_overlap
from .specialization import NO_FREQUENT_TOKEN, domain_specialization, missing_specialization, vocabulary_specialization
from .srp import DEFAULT_M, srp
from .study_cache import POLICIES, curves, segment_lengths

__all__ = ["TABLES", "analyze", "json_safe"]

# table -> its value columns: a table where none of them is defined in any row is not written
TABLES = {"curves": ("observed",), "srp": ("observed",), "overlap": ("observed",), "balance": ("balance", "cv"),
          "vocabulary": ("share",), "domains": ("rate", "specialization")}


def tasks(m_values, permutations) -> list[tuple[str, str, int | None]]:
    """The units of work, in order, for the progress bar: (kind, policy, m)."""
    fsf = [("curve", "fsf", m) for m in segment_lengths(m_values)]
    tasks = [("curve", p, None) for p in POLICIES if p != "fsf"] + fsf
    if permutations:
        tasks += [("chance-curve", policy, m) for _, policy, m in list(tasks)]
    return tasks + [("srp", "", None), ("overlap", "", None), ("balance", "", None), ("specialization", "", None)]


def analyze(trace: Trace, out: str | os.PathLike, *, m=DEFAULT_M, permutations: int = DEFAULT_PERMUTATIONS,
            seed: int = 0, resamples: int = 1000, progress=None, overwrite: bool = False) -> dict:
    """Compute everything and write it under `out`; returns the summary.

    `progress(description, advance)` is called as work units start and end; `permutations=0`
    skips the chance levels. An existing `out` is refused unless `overwrite`, which replaces
    the tables and summary written there before.
    """
    m_values = segment_lengths(m)
    permutations = check_permutations(permutations, least=0)
    resamples = check_resamples(resamples)  # before the curves, not after them
    seed = check_seed(seed)
    out = output_folder(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExpertcacheError(f"{out} already exists; choose another --out or pass --overwrite")
    step = progress or (lambda description, advance: None)
    tables: dict[str, list[dict]] = {}
    k, L = trace.top_k, trace.num_moe_layers

    observed = {}
    skipped = missing_specialization(trace)  # table -> why it is not written
    for kind, policy, mm in tasks(m_values, permutations):
        step(f"{kind} {policy}{'' if mm is None else f' m={mm}'}".strip(), 0)
        if kind == "curve":
            observed[(policy, mm)] = curves(trace, policy, mm)
        elif kind == "chance-curve":
            chance = chance_curves(trace, policy, mm, permutations=permutations, seed=seed)
            tables.setdefault("curves", []).extend(_curve_rows(observed[(policy, mm)], chance, k, L))
        elif kind == "srp":
            report = srp(trace, m_values, by=("expert", "domain", "position"), seed=seed, resamples=resamples)
            base = chance_srp(trace, m_values, permutations=permutations, seed=seed) if permutations else None
            tables["srp"] = _srp_rows(report, base)
        elif kind == "overlap":
            tables["overlap"] = _overlap_rows(consecutive_overlap(trace),
                                              chance_overlap(trace, permutations=permutations, seed=seed) if permutations else None)
        elif kind == "balance":
            tables["balance"] = _balance_rows(global_balance(trace), local_balance(trace, m_values))
        else:
            if "vocabulary" not in skipped:
                tables["vocabulary"] = vocabulary_specialization(trace)
            if "domains" not in skipped:
                tables["domains"] = _domain_rows(trace, *domain_specialization(trace))
        step("", 1)
    if not permutations:
        tables["curves"] = [row for c in observed.values() for row in _curve_rows(c, None, k, L)]
    for name in [n for n, rows in tables.items() if not _defined(rows, TABLES[n])]:
        del tables[name]
        skipped[name] = NO_FREQUENT_TOKEN if name == "vocabulary" else "no value is defined for this trace"
    summary = _summary(trace, tables, m_values, permutations, seed, resamples) | {"skipped": skipped}
    # an earlier run's summary goes first (tables without one are unfinished), then its tables: one
    # this run skips must not stay behind; the summary comes last
    earlier = ["summary.json"] + [f"{name}{suffix}" for name in TABLES for suffix in (".parquet", ".csv")]
    with staged_files(out, replaces=earlier) as stage:
        for name, rows in tables.items():
            _write_table(stage / name, rows)
    write_json_atomic(out / "summary.json", summary)
    return summary


def _defined(rows: list[dict], columns) -> bool:
    """Whether any row has a finite value in any of `columns`."""
    return any(isinstance(r[c], (int, float)) and math.isfinite(r[c]) for r in rows for c in columns)


def _excess(observed, chance) -> dict:
    observed = None if observed is None or not np.isfinite(observed) else float(observed)
    chance = None if chance is None or not np.isfinite(chance) else float(chance)
    excess = None if observed is None or chance is None else observed - chance
    return {"excess": excess, "observed": observed, "chance": chance}


def _curve_rows(obs, chance, k, L) -> list[dict]:
    rows = []
    for layer in range(-1, obs.per_layer.shape[0]):
        values = obs.model_level if layer < 0 else obs.per_layer[layer]
        base = None if chance is None else (chance.model_level if layer < 0 else chance.per_layer[layer])
        active = k * L if layer < 0 else k
        for c, rate in enumerate(values, start=1):
            rows.append({"policy": obs.policy, "m": obs.m or 0, "scope": "model" if layer < 0 else "layer",
                         "layer": layer, "cache_size": c, "cache_multiple": c / active,
                         **_excess(rate, None if base is None else base[c - 1])})
    return rows


def _srp_rows(report, base) -> list[dict]:
    rows = []
    for m, result in report.results.items():
        def add(breakdown, value, layer=-1, expert=-1, domain="", position=-1, chance=None):
            lo, hi = value.ci if value.ci is not None else (math.nan, math.nan)
            rows.append({"m": m, "breakdown": breakdown, "layer": layer, "expert": expert, "domain": domain,
                         "position": position, **_excess(value.srp, chance), "ci_lo": lo,
                         "ci_hi": hi, "threshold": -1 if value.threshold is None else value.threshold,
                         "group_ratio": value.group_ratio, "activation_ratio": value.activation_ratio})

        add("model", result["model"], chance=None if base is None else base[m][0])
        for l, value in enumerate(result["per_layer"]):
            add("layer", value, layer=l, chance=None if base is None else base[m][1][l])
        for l, experts in enumerate(result["per_expert"]):
            for e, value in enumerate(experts):
                add("expert", value, layer=l, expert=e)
        for name, value in result["per_domain"].items():
            add("domain", value, domain=name)
        for p, value in enumerate(result["per_position"]):
            add("position", value, position=p)
    return rows


def _overlap_rows(observed, chance) -> list[dict]:
    rows = [{"layer": -1, **_excess(observed[0], None if chance is None else chance[0])}]
    rows += [{"layer": l, **_excess(v, None if chance is None else chance[1][l])} for l, v in enumerate(observed[1])]
    return rows


def _balance_rows(global_, local) -> list[dict]:
    """Window 0 is the global balance, window m the local balance over m tokens."""
    return [{"window": m, "layer": l, "balance": float(b), "cv": float(cv)}
            for m, values in {0: global_, **local}.items() for l, (b, cv) in enumerate(values)]


def _domain_rows(trace, rate, spec) -> list[dict]:
    """One row per (layer, expert the layer has, domain)."""
    return [{"layer": l, "expert": e, "domain": name, "rate": float(rate[l, e, d]), "specialization": float(spec[l, e])}
            for l, own in enumerate(trace.model.num_experts) for e in range(own) for d, name in enumerate(trace.domains)]


def _summary(trace, tables, m_values, permutations, seed, resamples) -> dict:
    """Headline figures, excess first: SCH at 2x, SRP and overlap, model level and per m."""
    model_rows = [r for r in tables["curves"] if r["scope"] == "model"]
    at_2x = {}
    for r in model_rows:
        key = r["policy"] if r["policy"] != "fsf" else f"fsf_m{r['m']}"
        if r["cache_multiple"] <= 2.0 and (key not in at_2x or r["cache_size"] > at_2x[key]["cache_size"]):
            at_2x[key] = r
    srp_model = {str(r["m"]): {k: r[k] for k in ("excess", "observed", "chance")} | {"ci": [r["ci_lo"], r["ci_hi"]]}
                 for r in tables["srp"] if r["breakdown"] == "model"}
    overlap = tables["overlap"][0]
    balance = {}
    for r in tables["balance"]:
        balance.setdefault("global" if r["window"] == 0 else f"m{r['window']}", []).append(r["balance"])
    return json_safe({
        "locality_excess_over_chance": {
            "sch_2x": {key: r["excess"] for key, r in at_2x.items() if key.startswith("fsf")},
            "hit_rate_2x": {key: r["excess"] for key, r in at_2x.items() if not key.startswith("fsf")},
            "srp": {m: v["excess"] for m, v in srp_model.items()},
            "consecutive_overlap": overlap["excess"],
        },
        "model_level_hit_rate_2x": {key: {k: r[k] for k in ("excess", "observed", "chance", "cache_size")}
                                    for key, r in at_2x.items()},
        "srp": srp_model,
        "consecutive_overlap": {k: overlap[k] for k in ("excess", "observed", "chance")},
        "load_balance_mean_over_layers": {k: _finite_mean(v) for k, v in balance.items()},
        "trace": {"model": trace.model.name, "sequences": trace.num_sequences, "tokens": trace.num_tokens,
                  "moe_layers": trace.num_moe_layers, "experts": trace.num_experts, "top_k": trace.top_k,
                  "domains": trace.domains},
        "settings": {"m": list(m_values), "permutations": permutations, "seed": seed, "resamples": resamples},
        "tables": sorted(tables),
    })


def _finite_mean(values) -> float | None:
    """Mean of the defined values (None when there is none: a window longer than every sequence)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def json_safe(value):
    """JSON-safe: NaN and infinities become null, numpy scalars and arrays plain numbers and lists."""
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_table(stem: Path, rows: list[dict]) -> None:
    """stem.parquet and stem.csv (into a staging folder: see `analyze`)."""
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    pq.write_table(table, stem.with_suffix(".parquet"))
    pacsv.write_csv(table, stem.with_suffix(".csv"))
