"""`expertcache simulate`, `sweep`, `bench-hw`: the cache simulator from the command line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..atomic import output_folder
from ..trace.opening import open_trace
from ..errors import ExpertcacheError
from ..units import size_text
from . import Interrupted
from .arguments import ScopeOption, TraceArg, lower
from .progress import transient_bar

_err = Console(stderr=True)


def _fraction(value: float) -> str:
    """A precision or recall, or "n/a" where it is undefined (nothing predicted or needed)."""
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _percent(rate: float | None, digits: int) -> str:
    """A rate in percent, or "n/a" where nothing was looked up."""
    return "n/a" if rate is None else f"{rate:.{digits}%}"


AsDecode = Annotated[bool, typer.Option(
    "--as-decode", help="Replay every token as a decode step (e.g. a teacher-forced corpus trace, all prefill).")]
Accounting = Annotated[str, typer.Option(
    help="Accounting: published (a batch that does not fit sits over budget until a later one evicts; the "
         "published replays) or strict (the runtime's rule: never over budget, such a batch is computed in chunks).",
    callback=lower)]


def _label(r) -> str:
    """"global" / "layer", with ", strict" under strict accounting."""
    return r.scope if r.accounting == "published" else f"{r.scope}, {r.accounting}"


def _open(path: Path, as_decode: bool):
    trace = open_trace(path)
    return trace.as_decode() if as_decode else trace


def _profile(path: Optional[Path]):
    from ..cache.throughput import HardwareProfile

    return None if path is None else HardwareProfile.load(path)


def simulate_command(
    trace: TraceArg,
    policy: Annotated[str, typer.Option(help="Cache policy: lru, fifo, lfu, lfu-decay, gdsf, hyperbolic, static, random, belady, belady-size (a layer- prefix: per-layer scope).")] = "lru",
    scope: ScopeOption = None,
    budget_mib: Annotated[Optional[float], typer.Option(help="Budget in MiB (2^20 bytes).")] = None,
    budget_slots: Annotated[Optional[int], typer.Option(help="Budget in experts.")] = None,
    budget_x: Annotated[Optional[float], typer.Option(help="Budget as a multiple of the active experts (L x k: k per MoE layer).")] = None,
    shares: Annotated[Optional[str], typer.Option(help="Per-layer shares (scope layer): equal (default) or bytes.")] = None,
    prefetch: Annotated[Optional[str], typer.Option(help="Prefetcher: previous, frequency, stale-gate, oracle, learned.")] = None,
    prefetch_count: Annotated[Optional[int], typer.Option(help="Experts prefetched per layer (default k).")] = None,
    prefetch_distance: Annotated[int, typer.Option(help="Layers ahead the prefetch is issued.")] = 1,
    prefetch_reserve: Annotated[int, typer.Option(help="Slots reserved for prefetched experts (0: main cache).")] = 0,
    profile: Annotated[Optional[Path], typer.Option(help="Hardware profile JSON (bench-hw --out) for a throughput bound.")] = None,
    breakdown: Annotated[Optional[Path], typer.Option(help="Write per-layer, per-phase and per-step CSVs into this directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    as_decode: AsDecode = False,
    accounting: Accounting = "published",
    misses_on_cpu_below: Annotated[int, typer.Option(help="Compute a miss where the weights live, without loading it, when fewer than this many tokens of its layer call use it (replays run --misses-on-cpu; 0: never).", min=0)] = 0,
) -> None:
    """Replay a trace through one cache configuration (engine accounting)."""
    from ..cache import PrefetchConfig, simulate
    from ..cache.throughput import predict_throughput

    config = None
    if prefetch is None and (prefetch_count is not None or prefetch_distance != 1 or prefetch_reserve != 0):
        raise ExpertcacheError("--prefetch-count, --prefetch-distance and --prefetch-reserve apply only with --prefetch")
    if prefetch is not None:
        config = PrefetchConfig(PrefetchConfig.of(prefetch).prefetcher, prefetch_count, prefetch_distance, prefetch_reserve)
    hw = _profile(profile)
    if breakdown is not None:
        output_folder(breakdown, "--breakdown")
    result = simulate(_open(trace, as_decode), policy, scope, budget_mib, budget_slots, budget_x, config, shares=shares,
                      accounting=accounting, misses_on_cpu_below=misses_on_cpu_below)
    for w in result.warnings:
        _err.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    out = result.to_json()
    if breakdown is not None:
        _write_breakdown(result, breakdown)
    if hw is not None:
        out["throughput"] = predict_throughput(result, hw).to_json()
    if as_json:
        print(json.dumps(out))
        return
    budget = size_text(out["budget_bytes"]) if out["budget_bytes"] is not None else f"{result.budget_slots} slots"
    print(f"{out['policy']} ({_label(result)}), budget {budget}: hit rate {out['hit_rate']:.2%} "
          f"({out['hits']}/{out['lookups']}), decode {_percent(out['decode_hit_rate'], 2)}")
    if out["bytes_read"] is not None:
        print(f"read {size_text(out['bytes_read'])}")
    if result.misses_on_cpu:
        print(f"{result.misses_on_cpu} misses computed where the weights live (not loaded)")
    if result.prefetch is not None:
        p = result.prefetch
        print(f"prefetch {p.name}: issued {p.issued}, used {p.used}, wasted {p.wasted}, precision {_fraction(p.precision)}; "
              f"predictions, resident ones included: precision {_fraction(p.prediction_precision)}, "
              f"recall {_fraction(p.recall)}")
    if hw is not None:
        t = out["throughput"]
        prefill = t["prefill_tokens_per_s"]
        print(f"bound: decode {t['decode_tokens_per_s']:.2f} tok/s ({t['bound']}-bound)"
              + ("" if prefill is None else f", prefill {prefill:.2f} tok/s"))


def _write_breakdown(result, directory: Path) -> None:
    import csv

    from ..atomic import atomic_path

    for name, part, index, labels in (("layers", result.per_layer(), "layer", None),
                                      ("phases", result.per_phase(), "phase", ["prefill", "decode"]),
                                      ("steps", result.per_step(), "token", None)):
        with atomic_path(directory / f"{name}.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([index, *part])
            columns = [[None if v != v else v for v in values.tolist()] for values in part.values()]  # NaN: empty
            w.writerows(zip(labels or range(len(part["lookups"])), *columns))


def sweep_command(
    trace: TraceArg,
    out: Annotated[Path, typer.Option(help="Output directory for sweep.csv, sweep.parquet, sweep.png.")],
    policies: Annotated[str, typer.Option(help="Comma-separated policies (a layer- prefix: per-layer scope).")] = "belady,lru,lfu",
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets.")] = "1000,2000,4000,8000",
    unit: Annotated[str, typer.Option(help="Unit of --budgets: mib, slots or x.", callback=lower)] = "mib",
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes.")] = "global",
    profile: Annotated[Optional[Path], typer.Option(help="Hardware profile JSON: adds tokens/s columns.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Processes (default: all cores).")] = None,
    as_decode: AsDecode = False,
    accounting: Accounting = "published",
) -> None:
    """Hit rates (and bytes, throughput) for every policy x budget, written as a table and a plot."""
    from ..cache.sweep import sweep, write_sweep

    try:
        values = [float(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise ExpertcacheError(f"--budgets must be numbers separated by commas, got {budgets!r}") from None
    output_folder(out, "--out")
    t = _open(trace, as_decode)
    hw = _profile(profile)
    rows = []
    try:
        with transient_bar() as bar:
            task = bar.add_task("simulating", total=None)
            sweep(t, [p.strip() for p in policies.split(",") if p.strip()], values, unit=unit,
                  scopes=tuple(s.strip().lower() for s in scopes.split(",") if s.strip()), profile=hw, workers=workers,
                  progress=lambda done, total: bar.update(task, completed=done, total=total), into=rows,
                  accounting=accounting)
    except KeyboardInterrupt:
        if rows:  # keep what finished, beside (not over) an earlier complete sweep
            paths = write_sweep(rows, out, title=t.model.name, partial=True)
            raise Interrupted(f"{len(rows)} finished configurations written to {paths['csv']}") from None
        raise Interrupted("no configuration had finished; nothing was written") from None
    paths = write_sweep(rows, out, title=t.model.name)
    Console(highlight=False).print(_sweep_table(rows))
    print(f"{len(rows)} configurations -> {paths['csv']}, {paths['parquet']}, {paths['plot']}")


def _sweep_table(rows: list[dict]) -> Table:
    """The sweep as printed: one row per configuration, the columns a reader compares."""
    unit = {"mib": "budget (MiB)", "slots": "budget (experts)", "x": "budget (x active experts)"}[rows[0]["budget_unit"]]
    read = any(r["read_mib"] is not None for r in rows)
    speed = any(r.get("decode_tokens_per_s") is not None for r in rows)
    table = Table("policy", unit, "hit rate", "decode hit rate", *(["read (MiB)"] if read else []),
                  *(["decode tokens/s (bound)"] if speed else []), title="hit rate by policy and budget", title_justify="left")
    for r in rows:
        setting = ", ".join([*(["per layer"] if r["scope"] == "layer" else []), *(["strict"] if r["accounting"] == "strict" else [])])
        table.add_row(r["policy"] + (f" ({setting})" if setting else ""),
                      f"{r['budget']:g}", f"{r['hit_rate']:.2%}", _percent(r["decode_hit_rate"], 2),
                      *([f"{r['read_mib']:.1f}"] if read else []),
                      *([f"{r['decode_tokens_per_s']:.2f}"] if speed else []))
    return table


def bench_hw_command(
    hidden: Annotated[int, typer.Option(help="Model hidden size.")] = 2048,
    intermediate: Annotated[int, typer.Option(help="Expert intermediate size.")] = 768,
    dtype: Annotated[str, typer.Option(help="Torch dtype of the expert weights.")] = "float32",
    layers: Annotated[int, typer.Option(help="Layers (for the dense time per token).")] = 48,
    link: Annotated[str, typer.Option(help="What feeds the cache: disk (disk->RAM), device (host->GPU) or memory.")] = "disk",
    device: Annotated[str, typer.Option(help="Where experts compute: cpu or cuda.")] = "cpu",
    disk_mib: Annotated[int, typer.Option(help="Size of the disk read test.")] = 256,
    copy_mib: Annotated[int, typer.Option(help="Size of the memory copy test.")] = 256,
    directory: Annotated[Optional[Path], typer.Option(help="Directory for the disk read test (default: temp).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the profile JSON here (for simulate/sweep --profile).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure this machine's hardware profile for the throughput model."""
    from ..cache.hwbench import bench_hw

    profile, raw = bench_hw(hidden, intermediate, dtype, layers, disk_mib, None if directory is None else str(directory),
                            link, copy_mib, device)
    if out is not None:
        profile.save(out)
    if as_json:
        print(json.dumps({"profile": profile.to_json(), "measured": raw}))
        return
    print(f"memory copy  {raw['memcpy_bytes_per_s'] / 2**30:.2f} GiB/s")
    print(f"disk read    {raw['disk_read_bytes_per_s'] / 2**30:.2f} GiB/s{'' if raw['disk_cold'] else ' (page cache)'}")
    if raw["host_to_device_bytes_per_s"] is not None:
        print(f"host->device {raw['host_to_device_bytes_per_s'] / 2**30:.2f} GiB/s (pinned)")
    print(f"one expert   {raw['expert_s'] * 1e6:.1f} us per token ({raw['expert_bytes'] / 2**20:.2f} MiB, {dtype})")
    print(f"dense layer  {raw['dense_layer_s'] * 1e6:.1f} us per token")
    if out is not None:
        print(f"profile -> {out}", file=sys.stderr)


def advise_command(
    trace: TraceArg,
    policy: Annotated[str, typer.Option(help="Cache policy.")] = "lru",
    scope: ScopeOption = None,
    fraction: Annotated[float, typer.Option(help="Share of the best achievable hit rate to reach.")] = 0.9,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_decode: AsDecode = False,
    accounting: Accounting = "published",
) -> None:
    """Smallest cache budget reaching a fraction of the best achievable hit rate."""
    from ..cache import cycle_size, recommend_budget

    t = _open(trace, as_decode)
    advice = recommend_budget(t, policy, fraction, scope, accounting=accounting)
    if as_json:
        print(json.dumps(advice.to_json()))
        return
    size = size_text(advice.budget_bytes) if advice.budget_bytes is not None else f"{advice.budget_slots} slots"
    print(f"{advice.policy} ({_label(advice)}): {advice.budget_x:.2f}x the active experts = {size} reaches "
          f"{100 * advice.hit_rate:.1f} % (best {100 * advice.best_hit_rate:.1f} %, target {100 * fraction:.3g} % of it)")
    if advice.scope == "global" and advice.policy == "lru":
        slots, nbytes = cycle_size(t.model)
        cycle = size_text(nbytes) if nbytes is not None else f"{slots} slots"
        print(f"one token cycle ({t.num_moe_layers} layers x k={t.top_k}) needs {cycle}: a global LRU cache below it "
              "evicts most experts before the next token can reuse them")


def register(app: typer.Typer) -> None:
    """Add simulate, sweep, advise and bench-hw."""
    app.command("simulate")(simulate_command)
    app.command("sweep")(sweep_command)
    app.command("advise")(advise_command)
    app.command("bench-hw")(bench_hw_command)
