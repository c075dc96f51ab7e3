"""`sweep`: every (policy, scope, budget) of a grid over one trace, in parallel over cores,
written as a table (CSV and Parquet) and a hit-rate-versus-budget plot.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..atomic import staged_files
from ..errors import ExpertcacheError
from .budget import MIB
from .policies import per_layer_name, resolve_policy
from .simulate import check_accounting, simulate
from .stream import build_stream
from .throughput import HardwareProfile, predict_throughput

__all__ = ["sweep", "write_sweep", "BUDGET_UNITS"]

BUDGET_UNITS = ("mib", "slots", "x")
_WORKER = {}  # the trace and its stream, inherited by forked workers


def _row(task) -> dict:
    policy, scope, budget, unit = task
    trace, stream, profile = _WORKER["trace"], _WORKER["stream"], _WORKER["profile"]
    kw = {f"budget_{unit}": budget}
    r = simulate(trace, policy, scope, stream=stream, accounting=_WORKER["accounting"], **kw)
    row = {"policy": r.policy, "scope": r.scope, "budget": budget, "budget_unit": unit,
           "budget_bytes": r.budget_bytes, "budget_slots": r.budget_slots, **{
               k: v for k, v in r.to_json().items() if k not in ("policy", "scope", "budget_bytes", "budget_slots", "prefetch")}}
    row["read_mib"] = None if r.bytes_read is None else r.bytes_read / MIB
    if profile is not None:
        t = predict_throughput(r, profile)
        row["decode_tokens_per_s"], row["prefill_tokens_per_s"] = t.decode_tokens_per_s, t.prefill_tokens_per_s
    return row


def _whole(b):
    """A whole slot count as an int (2.0 -> 2); anything else unchanged, for resolve_budget to judge."""
    return int(b) if isinstance(b, float) and b.is_integer() else b


def sweep(trace, policies, budgets, *, unit: str = "mib", scopes=("global",), profile: HardwareProfile | None = None,
          workers: int | None = None, progress=None, into: list | None = None, accounting: str = "published") -> list[dict]:
    """One row per distinct (policy, scope, budget), in grid order, each replayed with `accounting`
    ("published" or "strict", see `simulate`; the rows' `accounting` column). `progress(done, total)`
    is called as rows finish; rows are also appended to `into` as they come, so an interrupted
    sweep keeps them."""
    check_accounting(accounting)
    policies, scopes = ([v] if isinstance(v, str) else v for v in (policies, scopes))  # one name, not its letters
    if unit not in BUDGET_UNITS:
        raise ExpertcacheError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}")
    if not policies or not budgets or not scopes:
        raise ExpertcacheError("give at least one policy, one scope and one budget")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ExpertcacheError(f"workers must be a whole number of processes, at least 1; got {workers!r}")
    # slots stay as given: a fractional slot count is refused by resolve_budget, never truncated.
    # One row per distinct configuration: a repeated item, or a layer- policy under several scopes.
    tasks = list(dict.fromkeys((*resolve_policy(p, None if per_layer_name(p) else s), _whole(b) if unit == "slots" else b, unit)
                               for p in policies for s in scopes for b in budgets))
    _WORKER.update(trace=trace, stream=build_stream(trace), profile=profile, accounting=accounting)
    rows = [] if into is None else into
    rows.append(_row(tasks[0]))  # fail fast on a bad configuration, and compile before forking
    workers = min(workers or os.cpu_count() or 1, len(tasks) - 1)
    if workers <= 1:
        results = map(_row, tasks[1:])
        pool = None
    else:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        results = pool.map(_row, tasks[1:], chunksize=max(1, len(tasks) // (8 * workers)))
    try:
        if progress:
            progress(1, len(tasks))
        for row in results:
            rows.append(row)
            if progress:
                progress(len(rows), len(tasks))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return rows


def write_sweep(rows: list[dict], out: str | os.PathLike, title: str = "", partial: bool = False) -> dict[str, Path]:
    """Write sweep.csv, sweep.parquet and sweep.png into `out`; returns their paths. The rows of
    an interrupted sweep (`partial`) go to sweep.partial.*, beside an earlier complete sweep,
    which a complete one replaces (and the partial files with it)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    stem = "sweep.partial" if partial else "sweep"
    names = {"csv": f"{stem}.csv", "parquet": f"{stem}.parquet", "plot": f"{stem}.png"}
    earlier = () if partial else [f"sweep.partial.{ext}" for ext in ("csv", "parquet", "png")]
    with staged_files(out, replaces=earlier) as stage:  # renamed in together, after all are written
        _write_files(rows, stage, title, names)
    return {kind: out / name for kind, name in names.items()}


def _write_files(rows: list[dict], out: Path, title: str, names: dict[str, str]) -> None:
    import matplotlib.pyplot as plt
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / names["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), out / names["parquet"])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (policy, scope) in dict.fromkeys((r["policy"], r["scope"]) for r in rows):
        pts = sorted((r["budget"], 100 * r["hit_rate"]) for r in rows if r["policy"] == policy and r["scope"] == scope)
        ax.plot(*zip(*pts), marker="o", label=policy if scope == "global" else f"{policy} ({scope})")
    unit = rows[0]["budget_unit"]
    ax.set_xlabel({"mib": "budget (MiB)", "slots": "budget (slots)", "x": "budget (x active experts)"}[unit])
    ax.set_ylabel("hit rate (%)")
    ax.set_title(title or "cache hit rate by budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / names["plot"], dpi=120)
    plt.close(fig)
