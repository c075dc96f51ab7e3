"""The study's report: per-variant tables and figures against chance, and the study's claims
checked one by one against this run's numbers.

A variant differs from base "clearly" when their SRP(16) excess intervals do not overlap
(each interval = the SRP bootstrap interval minus the chance level); otherwise the report says
the toy models show no clear difference. A model is "clearly above chance" when the lower end
of its SRP(16) interval exceeds its chance level.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..locality.specialization import MIN_COUNT
from ..units import signed_text
from .measures import LOCAL_M, SCH_M
from .presets import PRESETS

__all__ = ["write_study_report"]

M = str(SCH_M)  # the SRP segment length the comparisons use
CLAIMS = (
    ("local-balance", "lower", "Local (per-sequence) load balance constraints reduce locality compared with global balance."),
    ("shared-expert", "higher", "Shared experts increase locality."),
    ("more-experts", "higher", "More experts associate with higher locality."),
    ("fine-grained", "higher", "Finer-grained experts associate with higher locality."),
)


def write_study_report(out: Path, results: dict[str, dict], settings: dict, suitability: bool = False) -> Path:
    """OUT/report.md and OUT/figures/*.png from the variants' results; returns the report's path."""
    figures = out / "figures"
    names = list(results)
    drawn = [_locality_figure(figures, results), _training_figure(figures, results), _balance_figure(figures, results),
             _specialization_figure(figures, results)]
    lines = [
        "# Toy-model lab: what makes routing local",
        "",
        f"{len(names)} toy MoE models, each the DeepSeek-V3-style `base` with one factor changed, trained "
        f"{settings['minutes_per_model']:g} minutes each on {settings['device']} on the demo corpus, then traced on "
        f"held-out text ({settings['samples']} windows of {settings['length']} tokens per domain). Every figure stands "
        "beside its chance level (the same trace with each sequence's tokens shuffled, or the link it measures "
        "broken); the **excess** over chance is what the model's routing adds. `untrained` is base at "
        "initialisation: the excess a model shows before learning anything."
        + (" `expertcache report` over every variant's trace (verdicts, hit rates, figures per model): "
           "[suitability/report.html](suitability/report.html)." if suitability else ""),
        "",
        "## Locality per variant",
        "",
        "Training is bounded by minutes, so variants reach different step counts (column steps): slower "
        "architectures (wide, deep, more experts) and, on a shared machine, other load mean fewer steps.",
        "",
        f"SRP({M}) and consecutive overlap as written by `expertcache analyze OUT/traces/V` (summary.json); SCH({M}) is "
        "the model-level hit rate at 2x the active experts (same file), its interval from a bootstrap over sequences. "
        "Intervals are 95 % basic bootstrap intervals.",
        "",
        "| variant | change | steps | held-out loss (nats/token) | SRP | chance | excess [interval] | SCH 2x | chance | excess "
        "[interval] | overlap | chance | excess |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, h, o = r["srp"][M], r["sch_2x"], r["overlap"]
        lines.append(f"| {name} | {r['change']} | {r['training']['steps']} | {r['training']['heldout_loss']:.2f} | "
                     f"{s['observed']:.3f} | {s['chance']:.3f} | {_excess(s)} | {h['observed']:.3f} | {h['chance']:.3f} | "
                     f"{_excess(h)} | {o['observed']:.3f} | {o['chance']:.3f} | {signed_text(o['excess'], 3)} |")
    lines += _barely_trained(results)
    lines += ["", _image(drawn[0]), "", "## Locality during training", "",
              "Consecutive-token overlap on held-out windows minus its chance level, logged while training "
              "(`OUT/models/V/log.jsonl`); step 0 is the untrained model.", "", _image(drawn[1]), "",
              "## Load balance and specialization", "",
              f"| variant | global balance | local balance (m={LOCAL_M}) | chance | domain specialization | chance | "
              "vocabulary specialization | chance |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lb, ds, vs = r["local_balance"], r["domain_specialization"], r["vocabulary_specialization"]
        lines.append(f"| {name} | {r['global_balance']:.3f} | {lb['observed']:.3f} | {lb['chance']:.3f} | " + " | ".join(
            _number(v) for v in (ds["observed"], ds["chance"], vs["observed"], vs["chance"])) + " |")
    lines += ["", "Balance is normalized entropy of expert loads (1 = even), global over the whole trace and local "
              f"inside windows of {LOCAL_M} tokens; its chance level shuffles tokens within sequences (global balance "
              "does not depend on order). Domain specialization is 1 - H(rate across domains)/log D per expert, chance "
              "with domain labels permuted across sequences; vocabulary specialization is the share of a frequent "
              f"token's occurrences sent to its most frequent expert (tokens seen at least {MIN_COUNT} times; a dash "
              "where the traces hold none), chance with token ids permuted. With one sequence per domain, permuting "
              "domain labels only renames the domains, so domain specialization equals its chance level. "
              "docs/metrics.md defines each.", "", _image(drawn[2]), "", _image(drawn[3]), "",
              "## The study's claims against these numbers", ""]
    lines += _claims(results)
    lines += ["", "## Settings", "", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in settings.items())
              + "; models `OUT/models/V` (config in toy.json), traces "
              "`OUT/traces/V`, analyses `OUT/analysis/V`, each variant's numbers `OUT/results/V.json`. "
              "Total wall time: " + f"{sum(r['wall_seconds'] for r in results.values()) / 60:.1f} min.", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _interval(r: dict) -> tuple[float, float]:
    lo, hi = r.get("ci", [math.nan, math.nan])
    return lo - r["chance"], hi - r["chance"]


def _barely_trained(results: dict) -> list[str]:
    """A warning under the table for trained variants that stopped inside their learning-rate warmup."""
    short = [f"{name} ({r['training']['steps']} of {PRESETS[name].warmup_steps})" for name, r in results.items()
             if name in PRESETS and r["training"]["steps"] < PRESETS[name].warmup_steps]
    if not short:
        return []
    return ["", f"**Stopped inside the learning-rate warmup:** {', '.join(short)} steps. Their routers are close to "
            "their initialisation, so their figures say little about training; give more `--minutes-per-model` (or "
            "`--threads 1` on a machine whose cores are busy with other work)."]


def _excess(r: dict) -> str:
    lo, hi = _interval(r)
    return f"{signed_text(r['excess'], 3)} [{signed_text(lo, 3)}, {signed_text(hi, 3)}]"


def _claims(results: dict) -> list[str]:
    base = results.get("base")
    lines = []
    for variant, direction, claim in CLAIMS:
        if variant not in results or base is None:
            lines.append(f"- **{claim}** Not tested in this run (variant `{variant}` not trained).")
            continue
        lines.append(f"- **{claim}** (study's claim) {_compare(base, results[variant], variant, direction)}")
    lines.append(f"- **Domain specialization associates with higher locality.** (study's claim) {_association(results)}")
    for variant in ("no-balance", "high-balance", "dense-first", "z-loss", "wide", "deep"):
        if variant in results and base is not None:
            lines.append(f"- `{variant}` ({results[variant]['change']}), no claim of the study: "
                         f"{_compare(base, results[variant], variant, None)}")
    above = [n for n, r in results.items() if r["srp"][M]["ci"][0] > r["srp"][M]["chance"]]
    lines.append(f"- Models clearly above chance (SRP({M}) interval above its chance level): "
                 f"{', '.join(above) if above else 'none'}.")
    if "untrained" in results:
        ulo, uhi = _interval(results["untrained"]["srp"][M])
        learned = [n for n in _trained(results) if _interval(results[n]["srp"][M])[0] > uhi]
        lines.append(f"- The untrained base is at {results['untrained']['srp'][M]['excess']:+.3f} [{ulo:+.3f}, {uhi:+.3f}] "
                     "over chance: initialisation alone makes consecutive router inputs alike. Trained models clearly "
                     f"beyond it (excess interval above the untrained one): {', '.join(learned) if learned else 'none'}.")
    return lines


def _trained(results: dict) -> list[str]:
    return [n for n in results if n != "untrained"]


def _compare(base: dict, other: dict, name: str, direction: str | None) -> str:
    b, o = base["srp"][M], other["srp"][M]
    (blo, bhi), (olo, ohi) = _interval(b), _interval(o)
    text = f"SRP({M}) excess {o['excess']:+.3f} [{olo:+.3f}, {ohi:+.3f}] for `{name}` vs {b['excess']:+.3f} " \
           f"[{blo:+.3f}, {bhi:+.3f}] for base"
    if olo > bhi:
        found = "higher"
    elif ohi < blo:
        found = "lower"
    else:
        return text + ": the intervals overlap, so these toy models show no clear difference."
    if direction is None:
        return text + f": clearly {found}."
    verdict = "agrees with the study" if found == direction else "disagrees with the study"
    return text + f": clearly {found}, which {verdict}."


def _association(results: dict) -> str:
    names = _trained(results)
    if len(names) < 4:
        return "Too few variants in this run to look for an association."
    spec = [results[n]["domain_specialization"]["observed"] - results[n]["domain_specialization"]["chance"] for n in names]
    excess = [results[n]["srp"][M]["excess"] for n in names]
    rho = _spearman(np.array(spec), np.array(excess))
    strength = "no clear association" if abs(rho) < 0.5 else ("a positive association, as the study found" if rho > 0
                                                              else "a negative association, against the study")
    return (f"Across the {len(names)} variants, the rank correlation of domain-specialization excess with SRP({M}) "
            f"excess is {rho:+.2f}: {strength} (with {len(names)} points, |rho| < 0.5 is indistinguishable from none).")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _image(path: Path) -> str:
    return f"![{path.stem}](figures/{path.name})"


# ---------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _locality_figure(folder: Path, results: dict) -> Path:
    """Excess over chance (0 = chance) with intervals; the untrained model's excess for reference."""
    plt = _pyplot()
    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in zip(axes, ("srp", "sch_2x", "overlap"), (f"SRP({M})", f"SCH({SCH_M}) at 2x", "consecutive overlap")):
        rows = [results[n][key][M] if key == "srp" else results[n][key] for n in names]
        excess = np.array([r["excess"] for r in rows])
        ax.bar(x, excess, color="tab:blue", alpha=0.7, label="measured - chance")
        if all("ci" in r for r in rows):
            ci = np.array([_interval(r) for r in rows])
            ax.errorbar(x, excess, yerr=[excess - ci[:, 0], ci[:, 1] - excess], fmt="none", color="black", capsize=3,
                        label="95 % interval")
        ax.axhline(0, color="tab:red", linewidth=1, label="chance")
        if "untrained" in results:
            ax.axhline(excess[names.index("untrained")], color="gray", linestyle="--", linewidth=1, label="untrained")
        ax.set_xticks(x, names, rotation=60, ha="right")
        ax.set_title(title)
    axes[0].set_ylabel("excess over chance")
    axes[0].legend(fontsize=8)
    fig.suptitle("locality of each variant on held-out text: excess over its chance level")
    return _save(fig, folder, "locality")


def _training_figure(folder: Path, results: dict) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, name in enumerate(_trained(results)):  # tab20: the 10 strong hues first, then their light twins
        log = results[name]["training"]["log"]
        ax.plot([e["tokens"] / 1e6 for e in log], [e["overlap_excess"] for e in log], marker=".", label=name,
                color=plt.cm.tab20((2 * i) % 20 + (2 * i) // 20))
    ax.axhline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("overlap - chance")
    ax.set_title("consecutive-token overlap above chance during training (0 = chance)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, folder, "training")


def _balance_figure(folder: Path, results: dict) -> Path:
    plt = _pyplot()
    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.2, [results[n]["global_balance"] for n in names], 0.4, label="global (order-free: its own chance)")
    ax.bar(x + 0.2, [results[n]["local_balance"]["observed"] for n in names], 0.4, label=f"local, m={LOCAL_M}")
    ax.scatter(x + 0.2, [results[n]["local_balance"]["chance"] for n in names], marker="_", s=200, color="tab:red",
               zorder=3, label="local, chance")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel("normalized entropy of loads")
    ax.set_title("load balance, global and local, against chance")
    ax.legend(fontsize=8)
    return _save(fig, folder, "balance")


def _specialization_figure(folder: Path, results: dict) -> Path:
    plt = _pyplot()
    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in zip(axes, ("domain_specialization", "vocabulary_specialization"),
                              ("domain specialization", "vocabulary specialization (input tokens)")):
        ax.bar(x, [results[n][key]["observed"] for n in names], color="tab:blue", alpha=0.7, label="measured")
        ax.scatter(x, [results[n][key]["chance"] for n in names], marker="_", s=300, color="tab:red", zorder=3,
                   label="chance")
        ax.set_xticks(x, names, rotation=60, ha="right")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    return _save(fig, folder, "specialization")
