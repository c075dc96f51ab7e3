"""`report`: for each trace the verdict, the advice and the evidence as figures, written as
report.html (self-contained), report.md with figures/*.png, and report.json (every number).

The folder is written whole into a temporary sibling and renamed into place, so a crash or
Ctrl-C leaves the previous report (or none), never half of one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_folder, holds_working_directory, output_folder
from ..cache.budget import check_budget_value
from ..errors import ExpertcacheError
from ..trace import Trace, open_trace
from ..trace.examples import EXAMPLE_PREFIX
from ..units import count_text, signed_text
from .document import Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from .evidence import M, OPERATING_POINT, STEPS, Evidence, gather
from .outlook import Outlook, outlook_rows
from .plots import comparison, figures_of
from .verdict import JUDGEABLE, LOCAL, Verdict, judge

__all__ = ["Finding", "assess", "progress_units", "write_report"]

TITLE = "Does it suit expert offloading?"


@dataclass
class Finding:
    """One trace's evidence and the verdict on it."""

    evidence: Evidence
    verdict: Verdict

    @property
    def outlook(self) -> Outlook:
        return Outlook.of(self.evidence)


def progress_units(traces: int) -> int:
    """Units `write_report` reports through `progress`: every step of every trace, then the writing."""
    return traces * (len(STEPS) + 1) + 1


def assess(sources, *, profile=None, budget_mib: float | None = None, progress=None) -> list[Finding]:
    """Gather the evidence and judge each trace (`sources`: Traces, paths or example:NAME), named
    by the example's name or else the model's (with its folder's where two traces share a model)."""
    step = progress or (lambda description: None)
    if budget_mib is not None:
        check_budget_value(budget_mib, "MiB")
    traces = [open_trace(source) for source in sources]  # every source readable before any work
    findings = []
    for trace, label in zip(traces, _labels(sources, traces)):
        ev = gather(trace, label, profile=profile, budget_mib=budget_mib,
                    progress=lambda s, label=label: step(f"{label}: {s}"))
        findings.append(Finding(ev, judge(ev)))
    return findings


def _labels(sources, traces) -> list[str]:
    """Each trace's name in the report: the example's, or the model's; the folder is added where
    two traces share a model, and a count where the same source comes twice."""
    examples = [not isinstance(s, Trace) and str(s).startswith(EXAMPLE_PREFIX) for s in sources]
    names = [str(s).removeprefix(EXAMPLE_PREFIX) if e else t.model.name for s, t, e in zip(sources, traces, examples)]
    names = [f"{n} ({Path(s).name})" if names.count(n) > 1 and not e and not isinstance(s, Trace) else n
             for s, n, e in zip(sources, names, examples)]
    return [n if names.count(n) == 1 else f"{n} ({names[:i + 1].count(n)})" for i, n in enumerate(names)]


def write_report(sources, out: str | os.PathLike, *, profile=None, budget_mib: float | None = None,
                 overwrite: bool = False, progress=None) -> list[Finding]:
    """Assess `sources` and write the report folder `out` (see the module docstring)."""
    out = output_folder(out)
    if out.exists() and not overwrite:
        raise ExpertcacheError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists():
        _check_replaceable(out)
    step = progress or (lambda description: None)
    findings = assess(sources, profile=profile, budget_mib=budget_mib, progress=step)
    figures = []
    for f in findings:
        figures.append(figures_of(f.evidence))
        step(f"{f.evidence.label}: figures")
    blocks = _introduction(findings) + [b for f, figs in zip(findings, figures) for b in _section(f, figs)]
    data = [_data(f, figs) for f, figs in zip(findings, figures)]
    _write_folder(out, blocks, data)
    step("written")
    return findings


def _introduction(findings: list[Finding]) -> list:
    blocks = [Paragraph(
        "An MoE model uses only k of its E experts per token in each MoE layer, so an offloading runtime keeps a "
        "cache of experts in fast memory and loads the others from slow memory when a token needs them. That pays "
        "off when consecutive tokens reuse experts (locality). This report measures that on recorded routing and "
        "says, for each model, whether offloading suits it, with which cache, and what to expect.")]
    if len(findings) > 1:
        rows = []
        for f in findings:
            ev, o = f.evidence, f.outlook
            rows.append((ev.label, f"{ev.model.max_experts} / {ev.model.top_k}", str(ev.tokens),
                         f"{o.sch:.1%} vs {o.sch_chance:.1%} ({signed_text(100 * o.sch_excess)})",
                         f"{o.srp:.3f} vs {o.srp_chance:.3f}", f"{o.lru_engine:.1%}", f.verdict.kind))
        blocks += [Heading(1, "All models"),
                   Table(("model", "experts / k", "tokens", "SCH at 2x vs chance (excess, points)",
                          f"SRP({findings[0].evidence.m}) vs chance", "LRU hit rate at 2x (engine)", "verdict"),
                         tuple(rows)),
                   _image(comparison([f.evidence for f in findings]))]
    return blocks + _glossary()


def _glossary() -> list:
    return [Heading(1, "How to read this report"), Bullets((
        "Active experts: the k experts each MoE layer picks for a token; a token uses k x L of them over the L MoE "
        "layers. Cache sizes are given as multiples of that (2x = room for twice one token's experts), in "
        "experts and in GiB.",
        "Hit rate: the share of expert lookups found in the cache; every miss loads an expert from slow memory.",
        "Chance level: the same measure on the trace with token order shuffled inside each sequence. It keeps how "
        "often each expert is used and destroys the order, so measured minus chance (the excess) is what locality adds.",
        "SRP(m) (segment routing best performance): in windows of m tokens, predict for every token the experts "
        "its window uses at least tau times; SRP is the F1 score of that prediction at the best tau (1 = a window "
        "uses the same experts throughout).",
        "SCH(m) (segment cache hit rate): the hit rate of a cache that, at each token, keeps the experts the next "
        "m tokens need most. It tells how much a cache can gain from locality over m tokens.",
        "Study accounting: one cache per MoE layer, emptied at the start of every sequence; a token's lookups are "
        "judged against the cache as it stood before the token. It measures the routing itself.",
        "Engine accounting: what an offloading engine sees: one cache shared by all MoE layers and sequences, "
        "filled once, every token served as a decode step (one token at a time); the budget counts the experts "
        "held. The recommended sizes and hit rates use it.",
        f"The verdict rule: routing is local when SCH({M}) at 2x beats its chance level by at least "
        f"{100 * LOCAL:.0f} points; a cache is small when the smallest LRU cache reaching 90% of LRU's best hit "
        "rate holds at most a third of all experts. Local and small: suits offloading. Small but not local: suits "
        "offloading because a few experts take most of the traffic, and a fixed cache of them would do about as "
        "well. Local but not small: suits only with a large cache. Neither: does not suit. Sequences shorter than "
        f"{M} tokens, or a trace where even a cache of every expert hits less than {JUDGEABLE:.0%}, are too short "
        "to judge.",
    ))]


def _section(f: Finding, figures) -> list:
    ev, v = f.evidence, f.verdict
    blocks = [Heading(1, f"{ev.label}: {v.kind}"),
              Paragraph(f"{ev.model.name}: {count_text(ev.tokens, 'token')} in {count_text(ev.sequences, 'sequence')}, "
                        f"{ev.model.num_moe_layers} MoE layers of {ev.model.max_experts} experts, k = {ev.model.top_k}."),
              Paragraph(v.reason[0].upper() + v.reason[1:] + ".", strong=f"Verdict: {v.kind}."),
              Heading(2, "Recommended configuration"), Bullets(v.advice)]
    if v.caveats:
        blocks.append(Paragraph("; ".join(v.caveats) + ".", strong="Limits of this trace:"))
    blocks += [Heading(2, "Headline figures"),
               Table(("figure", "measured", "chance level", "excess over chance"), tuple(outlook_rows(f.outlook))),
               Heading(2, "Evidence")]
    blocks += [_image(fig, ev.label) for fig in figures]
    for figure, note in ev.notes.items():
        blocks.append(Paragraph(f"No {_ABSENT[figure]} figure: {note}."))
    blocks += [Paragraph(_pruning(ev), strong="Rarely used experts (pruning candidates):"),
               Paragraph(_pairs(ev), strong="Experts picked together:")]
    return blocks


_ABSENT = {"vocabulary": "vocabulary specialization", "domains": "domain specialization",
           "weights": "routing-weight spread"}


def _pruning(ev: Evidence) -> str:
    rare = ev.rare
    per_layer = rare.sum(axis=1)
    worst = np.argsort(-per_layer, kind="stable")[:5]
    return (f"{int(rare.sum())} of {sum(ev.model.num_experts)} experts got fewer than a tenth of an even share of "
            f"their layer's lookups; most in layers " + ", ".join(f"{l} ({per_layer[l]})" for l in worst) +
            (". On a short trace many experts are rare by chance alone." if ev.tokens < 10 * ev.model.max_experts else "."))


def _pairs(ev: Evidence) -> str:
    counts, lift = ev.co_firing
    candidates = np.argwhere(np.triu(counts >= 5, 1))
    if not len(candidates):
        return f"no pair of experts shares 5 tokens in MoE layer {ev.focus_layer}."
    best = sorted(candidates.tolist(), key=lambda p: -lift[p[0], p[1]])[:5]
    return (f"in MoE layer {ev.focus_layer}, the pairs most often routed together, relative to independent choice: "
            + ", ".join(f"{a} and {b} ({lift[a, b]:.1f}x, {counts[a, b]} tokens)" for a, b in best) + ".")


def _image(figure, label: str = "") -> Image:
    """The figure with its PNG's path: figures/LABEL-NAME.png, label made safe for a file name."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
    return Image(figure, f"figures/{slug + '-' if slug else ''}{figure.name}.png")


def _data(f: Finding, figures) -> dict:
    """report.json's entry for one trace: the verdict, the headline, and the numbers behind every figure."""
    from ..locality.analyze import json_safe

    ev = f.evidence
    k = ev.model.top_k
    return json_safe({
        "label": ev.label, "model": ev.model.name, "tokens": ev.tokens, "sequences": ev.sequences,
        "verdict": f.verdict.to_json(), "outlook": f.outlook.to_json(),
        "recommended": asdict(ev.recommended), "choices": [asdict(c) for c in ev.choices],
        "at_budget": None if ev.at_budget is None else asdict(ev.at_budget),
        "advice": ev.advice.to_json(), "engine_tokens": ev.engine_tokens, "engine": ev.engine,
        "srp": {str(m): {"measured": r["model"].srp, "ci": r["model"].ci, "chance": ev.srp_chance[m][0]}
                for m, r in ev.srp.results.items()},
        "study_at_2x": {p: ev.at_operating_point(c) for p, c in ev.study.items()},
        "study_curves": {p: np.nanmean(c.per_layer, axis=0) for p, c in ev.study.items()},
        "sch_chance_curve": np.nanmean(ev.sch_chance.per_layer, axis=0), "operating_point_slots": OPERATING_POINT * k,
        "layer_hits": ev.layer_hits, "balance": {"global": ev.balance[:, 0], "local": ev.local_balance[:, 0]},
        "rarely_used": {str(l): np.flatnonzero(row).tolist() for l, row in enumerate(ev.rare) if row.any()},
        "figures": {fig.name: fig.caption for fig in figures}, "absent": ev.notes,
    })


REPORT_FILES = {"figures", "report.md", "report.html", "report.json"}


def _check_replaceable(out: Path) -> None:
    """--overwrite replaces a report folder, nothing else: not other files (figures/ included:
    only the figures its report.md shows), not the working directory."""
    figures = out / "figures"
    shown = set(re.findall(r"\(figures/([^)\s]+)\)", (out / "report.md").read_text(errors="replace"))) \
        if (out / "report.md").is_file() else set()
    if {p.name for p in out.iterdir()} - REPORT_FILES or figures.is_file() \
            or figures.is_dir() and {p.name for p in figures.iterdir()} - shown:
        raise ExpertcacheError(f"{out} holds files that are not a report's; choose another --out")
    if holds_working_directory(out):
        raise ExpertcacheError(f"{out} holds the working directory; choose another --out")


def _write_folder(out: Path, blocks: list, data: list) -> None:
    with atomic_folder(out) as stage:
        (stage / "figures").mkdir()
        for image in (b for b in blocks if isinstance(b, Image)):
            (stage / image.file).write_bytes(image.figure.png)
        (stage / "report.md").write_text(to_markdown(TITLE, blocks))
        (stage / "report.html").write_text(to_html(TITLE, blocks))
        (stage / "report.json").write_text(json.dumps({"traces": data}, indent=1))
