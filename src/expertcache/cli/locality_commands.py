"""`expertcache curves`, `srp` and `analyze`: the locality metrics from the command line.

The JSON printed by `curves --json` and `srp --json` is a public contract (docs/metrics.md).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ExpertcacheError
from ..trace import open_trace
from .arguments import TraceArg
from .progress import transient_bar

# The locality package compiles numba kernels on import: imported inside each command, so that
# other commands start fast. Keep in step with expertcache.locality.srp.DEFAULT_M.
DEFAULT_M = "4,16,64,256"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]

_stderr = Console(stderr=True)


@contextmanager
def _progress(total: int, description: str):
    """A rich progress bar on stderr; yields a callback taking the units done so far."""
    with transient_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def _segment_lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ExpertcacheError(f"--m takes integers separated by commas, got {text!r}") from None
    if not values:
        raise ExpertcacheError("--m needs at least one segment length")
    return values


def _fmt(value, digits=4) -> str:
    """A table cell; undefined values (None, NaN) show as '-'."""
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def curves(
    trace_path: TraceArg,
    policy: Annotated[str, typer.Option("--policy", help="Cache policy: lru, lfu, belady or fsf.")],
    m: Annotated[Optional[int], typer.Option("--m", help="Segment length of fsf (SCH).")] = None,
    domain: Annotated[Optional[str], typer.Option("--domain", help="Only this domain's sequences.")] = None,
    max_multiple: Annotated[Optional[float], typer.Option(
        "--max-multiple", help="Model-level sizes only up to this multiple of the active experts (null above): "
                               "faster for models with many experts.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Hit rate at every cache size, per MoE layer and for one model-level cache (study accounting)."""
    from ..locality import curves as curves_api

    trace = open_trace(trace_path)
    with _progress(trace.num_sequences, f"{policy} curves") as done:
        result = curves_api(trace, policy, m, domain, max_multiple=max_multiple, progress=done)
    if as_json:
        print(json.dumps(result.to_json()))
        return
    k, L = trace.top_k, trace.num_moe_layers
    table = Table(title=f"{policy}{'' if m is None else f'(m={m})'} hit rate by cache size (multiple of active experts)")
    table.add_column("scope")
    multiples = [1, 2, 4, 8]
    for x in multiples:
        table.add_column(f"{x}x", justify="right")
    def cells(values, active):
        return [_fmt(values[min(x * active, len(values)) - 1], 3) for x in multiples]
    table.add_row("model", *cells(result.model_level, k * L))
    for l, row in enumerate(result.per_layer):
        table.add_row(f"layer {l}", *cells(row, k))
    Console().print(table)


def srp(
    trace_path: TraceArg,
    m: Annotated[str, typer.Option("--m", help="Segment lengths, comma separated.")] = DEFAULT_M,
    by: Annotated[Optional[list[str]], typer.Option("--by", help="Extra breakdowns: expert, domain, position (repeat or comma separate).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (0: no interval).")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """SRP (segment routing best performance) with its best threshold and bootstrap 95 % interval."""
    from ..locality import srp as srp_api

    trace = open_trace(trace_path)
    breakdowns = tuple(dict.fromkeys(b.strip() for item in (by or []) for b in item.split(",") if b.strip()))  # each once
    with _progress(trace.num_sequences, "srp") as done:
        report = srp_api(trace, _segment_lengths(m), breakdowns, seed=seed, resamples=resamples, progress=done)
    if as_json:
        print(json.dumps(report.to_json()))
        return
    caption = "one sequence: no interval (intervals resample whole sequences)" if trace.num_sequences == 1 and resamples else None
    table = Table(title="SRP (model level; per-layer range)", caption=caption)
    for column in ("m", "SRP", "95 % CI", "threshold", "group ratio", "k/E", "layers min..max"):
        table.add_column(column, justify="right")
    for mm, result in report.results.items():
        v = result["model"]
        layers = [x.srp for x in result["per_layer"] if x.srp == x.srp]
        table.add_row(str(mm), _fmt(v.srp), "-" if v.ci is None or v.srp != v.srp else f"[{_fmt(v.ci[0])}, {_fmt(v.ci[1])}]",
                      "-" if v.threshold is None else str(v.threshold), _fmt(v.group_ratio, 3),
                      _fmt(v.activation_ratio), f"{min(layers):.3f}..{max(layers):.3f}" if layers else "-")
    Console().print(table)
    for name in breakdowns:
        Console().print(_BREAKDOWNS[name](report))


def _interval(v) -> str:
    return _fmt(v.srp, 3) + ("" if v.ci is None or v.srp != v.srp else f" [{_fmt(v.ci[0], 3)}, {_fmt(v.ci[1], 3)}]")


def _by_domain(report) -> Table:
    domains = list(dict.fromkeys(d for r in report.results.values() for d in r["per_domain"]))
    table = Table("m", *domains, title="SRP by domain [95 % CI]", title_justify="left")
    for m, r in report.results.items():
        table.add_row(str(m), *(_interval(r["per_domain"][d]) if d in r["per_domain"] else "-" for d in domains))
    return table


def _by_expert(report) -> Table:
    table = Table("m", "lowest", "median", "highest", "most local expert", "experts without SRP",
                  title="SRP by expert (over every layer's experts)", title_justify="left")
    for m, r in report.results.items():
        values = [(v.srp, l, e) for l, experts in enumerate(r["per_expert"]) for e, v in enumerate(experts)]
        defined = sorted(x for x in values if x[0] == x[0])
        if not defined:
            table.add_row(str(m), "-", "-", "-", "-", str(len(values)))
            continue
        best = defined[-1]
        table.add_row(str(m), _fmt(defined[0][0], 3), _fmt(defined[len(defined) // 2][0], 3), _fmt(best[0], 3),
                      f"layer {best[1]} expert {best[2]}", str(len(values) - len(defined)))
    return table


def _by_position(report) -> Table:
    longest = max(len(r["per_position"]) for r in report.results.values())
    starts = [0] + [2**i for i in range(max(longest - 1, 1).bit_length()) if 2**i < longest]
    table = Table("m", *(str(p) for p in starts), title="SRP by window start position (tokens into the sequence)",
                  title_justify="left")
    for m, r in report.results.items():
        table.add_row(str(m), *(_fmt(r["per_position"][p].srp, 3) if p < len(r["per_position"]) else "-" for p in starts))
    return table


_BREAKDOWNS = {"domain": _by_domain, "expert": _by_expert, "position": _by_position}


def analyze(
    trace_path: TraceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the tables and summary.json.")],
    m: Annotated[str, typer.Option("--m", help="Segment lengths, comma separated.")] = DEFAULT_M,
    permutations: Annotated[int, typer.Option("--permutations", help="Shuffles for the chance levels (0: none).")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shuffles and the bootstrap.")] = 0,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the tables of an existing folder.")] = False,
) -> None:
    """Every locality metric as tidy tables (Parquet + CSV) and a summary led by excess over chance."""
    from ..locality.analyze import analyze as analyze_api
    from ..locality.analyze import tasks as analyze_tasks

    trace = open_trace(trace_path)
    m_values = _segment_lengths(m)
    total = len(analyze_tasks(m_values, permutations))
    with transient_bar(28) as bar:
        task = bar.add_task("analyze", total=total)
        summary = analyze_api(
            trace, out, m=m_values, permutations=permutations, seed=seed, resamples=resamples, overwrite=overwrite,
            progress=lambda description, advance: bar.update(task, advance=advance, description=description or "analyze"))
    excess = summary["locality_excess_over_chance"]
    _stderr.print(f"wrote {out}: {', '.join(summary['tables'])} (.parquet, .csv) and summary.json", highlight=False)
    for name, why in summary["skipped"].items():
        _stderr.print(f"skipped {name}: {why}", highlight=False)
    Console().print_json(data={"locality_excess_over_chance": excess})


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("curves")(curves)
    app.command("srp")(srp)
    app.command("analyze")(analyze)
