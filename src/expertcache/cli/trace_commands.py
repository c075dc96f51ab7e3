"""`expertcache import`, `export`, `info` and `examples`: traces in and out, and the bundled ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..trace import Trace, open_trace
from ..trace.arrays_io import export_arrays, import_arrays
from ..trace.bigmoe import import_bigmoe
from ..trace.examples import describe_examples
from ..trace.jsonl import import_jsonl
from ..trace.summary import summarize
from .arguments import TraceArg

import_app = typer.Typer(help="Bring routing recorded elsewhere into a trace.", no_args_is_help=True, rich_markup_mode=None)
export_app = typer.Typer(help="Write a trace out in other formats.", no_args_is_help=True, rich_markup_mode=None)

Out = Annotated[Path, typer.Option("--out", "-o", help="Trace directory to write.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing trace at --out.")]


@import_app.command("arrays")
def import_arrays_command(
    experts: Annotated[Path, typer.Argument(help="EXPERTS.npy: integer ids [sequences, tokens, layers, k]; -1 = not routed.")],
    num_experts: Annotated[int, typer.Option("--num-experts", "-E", help="Experts per layer.")],
    out: Out,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="W.npy routing weights, same shape.")] = None,
    tokens: Annotated[Optional[Path], typer.Option("--tokens", help="TOKENS.npy token ids [sequences, tokens].")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Import expert ids from .npy arrays (every layer MoE with E experts)."""
    trace = import_arrays(experts, num_experts, weights_path=weights, tokens_path=tokens)
    trace.save(out, overwrite=overwrite)
    _done(trace, out)


@import_app.command("bigmoe")
def import_bigmoe_command(
    route_csv: Annotated[Path, typer.Argument(help="ROUTE.csv in the route_trace v1 format.")],
    out: Out,
    overwrite: Overwrite = False,
) -> None:
    """Import a route_trace v1 CSV recorded by an on-device offloading engine."""
    trace = import_bigmoe(route_csv)
    trace.save(out, overwrite=overwrite)
    _done(trace, out)


@import_app.command("jsonl")
def import_jsonl_command(
    routes: Annotated[Path, typer.Argument(help="ROUTES.jsonl: one JSON object a token (docs/trace-format.md).")],
    num_experts: Annotated[int, typer.Option("--num-experts", "-E", help="Experts per MoE layer.")],
    out: Out,
    ids_sorted: Annotated[bool, typer.Option(
        "--ids-sorted", help="The recorder sorted each layer's ids (score order lost); recorded in the trace.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Import JSON Lines routing: one token a line, k expert ids per MoE layer."""
    trace = import_jsonl(routes, num_experts, ids_sorted=ids_sorted)
    trace.save(out, overwrite=overwrite)
    _done(trace, out)


@export_app.command("arrays")
def export_arrays_command(
    trace_path: TraceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="EXPERTS.npy to write.")],
    tokens: Annotated[Optional[Path], typer.Option("--tokens", help="Also write token ids [sequences, tokens].")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Also write routing weights.")] = None,
) -> None:
    """Export a fixed-length trace as EXPERTS.npy [sequences, tokens, layers, k]."""
    export_arrays(open_trace(trace_path), out, weights_path=weights, tokens_path=tokens)
    Console(stderr=True).print(f"wrote {out}")


def info(
    trace_path: TraceArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    top: Annotated[int, typer.Option("--top", help="How many of the most used experts to list.")] = 8,
) -> None:
    """Shape, model description, tokens per domain and the most used experts of a trace."""
    summary = summarize(open_trace(trace_path), top=top)
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    print_summary(summary)


def examples(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False) -> None:
    """The real routing traces bundled with expertcache: give example:NAME wherever a TRACE goes."""
    rows = describe_examples()
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    # plain columns: a table squeezed into a narrow terminal would fold the names one types
    print("bundled real routing traces; give example:NAME wherever a command takes a TRACE\n")
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in rows[0]}
    for row in [{column: column for column in widths}, *rows]:
        print("  ".join(str(row[column]).ljust(width) for column, width in widths.items()).rstrip())


def print_summary(summary: dict) -> None:
    """Human-readable form of `summarize`'s output."""
    console = Console()
    model = summary["model"]
    console.print(f"[bold]{summary['path'] or 'trace'}[/bold]: {model['name']} ({model['architecture']})")
    console.print(
        f"  {summary['sequences']} sequences, {summary['tokens']} tokens "
        f"(length {summary['sequence_length']['min']}..{summary['sequence_length']['max']}), "
        f"{summary['moe_layers']} MoE layers of {model['num_layers']}, {summary['experts']} experts, "
        f"k={summary['top_k']}, {model['num_shared_experts']} shared"
    )
    console.print(f"  phases: {summary['tokens_per_phase']}; optional arrays: {summary['optional_arrays'] or 'none'}")
    domains = Table("domain", "tokens", title="tokens per domain", title_justify="left")
    for name, count in summary["tokens_per_domain"].items():
        domains.add_row(name, str(count))
    console.print(domains)
    experts = Table("MoE layer", "expert", "requests", "share of layer", title="most used experts", title_justify="left")
    for row in summary["top_experts"]:
        experts.add_row(str(row["layer"]), str(row["expert"]), str(row["requests"]), f"{row['share_of_layer']:.1%}")
    console.print(experts)


def _done(trace: Trace, out: Path) -> None:
    Console(stderr=True).print(f"wrote {out}: {trace!r}")


def register(app: typer.Typer) -> None:
    """Add import, export, info and examples."""
    app.add_typer(import_app, name="import")
    app.add_typer(export_app, name="export")
    app.command("info")(info)
    app.command("examples")(examples)
