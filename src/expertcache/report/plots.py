"""The report's figures, each drawn from one trace's Evidence (or several, for the comparison)
and returned as PNG bytes with a one-sentence caption a newcomer can read.

Matplotlib runs headless (Agg); every figure is 10.5 inches wide at 110 dpi, so it reads at
its natural size in a 1280-pixel window.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..units import count_text, signed_text
from .evidence import OPERATING_POINT, VOCABULARY_KINDS, Evidence

__all__ = ["Figure", "figures_of", "comparison"]

WIDTH, DPI = 10.5, 110
CHANCE = dict(linestyle="--", alpha=0.8)


@dataclass(frozen=True)
class Figure:
    name: str  # file stem, unique within a report
    title: str
    caption: str
    png: bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    return buffer.getvalue()


def _axes(columns: int, height: float = 3.8):
    fig, axes = _pyplot().subplots(1, columns, figsize=(WIDTH, height), squeeze=False)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    return fig, list(axes[0])


def _layer_axis(ax) -> None:
    """x = MoE layer index: whole numbers only (a one-layer trace would be ticked -0.4 ... 0.4)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("MoE layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _multiple_axis(ax, low: float, high: float) -> None:
    """Log x axis of cache multiples, ticked at powers of two ("0.5x", "1x", "2x", ...)."""
    ticks = [2.0**p for p in range(int(np.floor(np.log2(low))), int(np.ceil(np.log2(high))) + 1)]
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()


def _multiples(ev: Evidence, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cache size as a multiple of the active experts k, layer-mean hit rate in %) of a per-layer curve."""
    sizes = np.arange(1, curve.shape[1] + 1)
    return sizes / ev.model.top_k, 100 * np.nanmean(curve, axis=0)


def locality(ev: Evidence) -> Figure:
    fig, (left, right) = _axes(2)
    ms = list(ev.srp.m)
    values = [ev.srp.results[m]["model"] for m in ms]
    srp = np.array([v.srp for v in values])
    if all(v.ci is not None for v in values):
        errors = np.abs(np.array([v.ci for v in values]).T - srp)
        left.errorbar(ms, srp, yerr=errors, marker="o", capsize=3, label="measured, 95 % interval")
    else:
        left.plot(ms, srp, marker="o", label="measured (one sequence: no interval)")
    left.plot(ms, [ev.srp_chance[m][0] for m in ms], marker="o", color="grey", **CHANCE, label="chance (tokens shuffled)")
    left.set(xscale="log", xlabel="segment length m (tokens)", ylabel="SRP (best F1, 0..1)", title="SRP by segment length")
    left.set_xticks(ms, [str(m) for m in ms])
    left.minorticks_off()
    for curve, style, label in ((ev.study["fsf"], {}, f"SCH({ev.m}) measured"),
                                (ev.sch_chance, {"color": "grey", **CHANCE}, "chance (tokens shuffled)")):
        right.plot(*_multiples(ev, curve.per_layer), label=label, **style)
    right.axvline(OPERATING_POINT, color="black", linewidth=0.8)
    right.set(xlabel="cache size per layer (multiples of the k active experts)", ylabel="hit rate (%)",
              title=f"SCH({ev.m}) by cache size (mean over layers)")
    _multiple_axis(right, 1 / ev.model.top_k, ev.model.max_experts / ev.model.top_k)
    for ax in (left, right):
        ax.legend()
    caption = (f"SRP (left) scores how well the experts used in a stretch of m tokens predict the experts each of "
               f"those tokens uses, and SCH (right) is the hit rate of a cache that keeps what the next {count_text(ev.m, 'token')} "
               f"need; the dashed lines are the same measures on the trace with token order shuffled (chance), so "
               f"the gap between solid and dashed is the locality (here {signed_text(100 * ev.sch_excess)} points of hit rate "
               f"at 2x, the vertical line).")
    return Figure("locality", "Locality against chance", caption, _png(fig))


def hit_rates(ev: Evidence) -> Figure:
    fig, (left, right) = _axes(2)
    for policy, label in (("lru", "LRU"), ("lfu", "LFU"), ("belady", "Belady (knows the future)"),
                          ("fsf", f"SCH({ev.m})")):
        left.plot(*_multiples(ev, ev.study[policy].per_layer), label=label)
    left.set(xlabel="cache size per layer (multiples of k)", ylabel="hit rate (%)",
             title="study accounting: one cache per layer")
    _multiple_axis(left, 1 / ev.model.top_k, ev.model.max_experts / ev.model.top_k)
    for policy, label in (("lru", "LRU"), ("lfu", "LFU"), ("belady", "Belady (knows the future)")):
        rows = [r for r in ev.engine if r["policy"] == policy]
        right.plot([r["budget"] for r in rows], [100 * r["hit_rate"] for r in rows], marker="o", markersize=3, label=label)
    c = ev.recommended
    right.plot([c.budget_x], [100 * c.hit_rate], marker="*", markersize=14, color="black", linestyle="none",
               label="recommended")
    right.set(xlabel="cache budget (multiples of the active experts)", ylabel="hit rate (%)",
              title="engine accounting: one cache for all layers")
    _multiple_axis(right, ev.engine[0]["budget"], ev.engine[-1]["budget"])
    for ax in (left, right):
        ax.legend()
    caption = ("Hit rate against cache size for each cache policy: left, the study's accounting (a separate cache "
               "per layer, emptied at every sequence, a token's lookups judged against the cache as it stood "
               f"before the token); right, the engine's (one cache shared by all layers and sequences, each of the "
               f"first {ev.engine_tokens} tokens served as a decode step), where the star is the recommended size.")
    return Figure("hit-rates", "Hit rate by cache size", caption, _png(fig))


def layer_heatmap(ev: Evidence) -> Figure:
    labels = list(ev.layer_hits)  # the recommended configuration first
    data = 100 * np.array([ev.layer_hits[k] for k in labels])
    fig, (ax,) = _axes(1, height=1.2 + 0.45 * len(labels))
    ax.grid(False)
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_yticks(range(len(labels)), labels)
    _layer_axis(ax)
    fig.colorbar(image, ax=ax, label="hit rate (%)", pad=0.01)
    worst = int(np.argmin(data[0]))
    caption = (f"Hit rate of each MoE layer with the recommended cache ({ev.recommended.budget_x:.1f}x the active "
               f"experts, engine accounting) for each policy, brighter is better: layer {worst} is the hardest "
               f"for the recommended {labels[0]} ({data[0, worst]:.0f} %).")
    return Figure("layers", "Hit rate per layer at the recommended size", caption, _png(fig))


def routing(ev: Evidence) -> Figure:
    ids = ev.routing  # [T, K]
    pad = np.iinfo(ids.dtype).max
    used = list(dict.fromkeys(int(e) for e in ids.ravel() if e != pad))  # experts in order of first use
    grid = np.zeros((len(used), len(ids)))
    row = {e: i for i, e in enumerate(used)}
    for t, token in enumerate(ids):
        for e in token[token != pad]:
            grid[row[int(e)], t] = 1
    fig, (ax,) = _axes(1, height=4.2)
    ax.grid(False)
    ax.imshow(grid, aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set(xlabel="token (first tokens of the first sequence)", ylabel="expert, in order of first use",
           title=f"MoE layer {ev.focus_layer}: {len(used)} distinct experts over {len(ids)} tokens")
    ax.set_yticks([])
    caption = (f"Each column is a token and each black cell an expert it was routed to in MoE layer {ev.focus_layer}: "
               "long horizontal runs mean consecutive tokens reuse the same experts, which is what a cache "
               "exploits, while scattered dots mean they do not.")
    return Figure("routing", "Routing of consecutive tokens", caption, _png(fig))


def balance(ev: Evidence) -> Figure:
    fig, (ax,) = _axes(1, height=3.4)
    layers = np.arange(ev.model.num_moe_layers)
    ax.plot(layers, ev.balance[:, 0], marker="o", markersize=3, label="global: whole trace")
    ax.plot(layers, ev.local_balance[:, 0], marker="o", markersize=3, label=f"local: windows of {count_text(ev.m, 'token')}")
    sizes = np.asarray(ev.model.num_experts, float)
    ceiling = np.minimum(1, np.log(ev.m * ev.model.top_k) / np.log(np.maximum(sizes, 2)))
    ax.plot(layers, ceiling, color="grey", **CHANCE, label=f"most even a window of {count_text(ev.m, 'token')} can be")
    ax.set(ylabel="balance (1 = all experts equally used)", ylim=(0, 1.05))
    _layer_axis(ax)
    ax.legend()
    caption = (f"How evenly each layer uses its experts (normalized entropy), over the whole trace and inside "
               f"windows of {count_text(ev.m, 'consecutive token')}: a model balanced globally but concentrated locally "
               f"(local well below its dashed ceiling) routes locally while still spreading load overall.")
    return Figure("balance", "Load balance, global and local", caption, _png(fig))


def specialization(ev: Evidence) -> Figure | None:
    panels = [p for p in ("vocabulary", "domains") if getattr(ev, p) is not None]
    if not panels:
        return None
    fig, axes = _axes(len(panels), height=3.4)
    layers = np.arange(ev.model.num_moe_layers)
    parts = []
    for ax, panel in zip(axes, panels):
        _layer_axis(ax)
        if panel == "vocabulary":
            for kind in VOCABULARY_KINDS:
                share = [r["share"] for r in ev.vocabulary if r["kind"] == kind and r["expert"] == -1]
                ax.plot(layers, share, marker="o", markersize=3, label=f"{kind} token")
            ax.set(ylabel="share of a token's uses", title="vocabulary: one expert per token?", ylim=(0, 1.05))
            ax.legend()
            parts.append("left: the share of a frequent token's occurrences that go to its favourite expert "
                         "(1 = always the same expert)" if len(panels) > 1 else
                         "the share of a frequent token's occurrences that go to its favourite expert")
        else:
            ax.plot(layers, np.nanmean(ev.domains[1], axis=1), marker="o", markersize=3)
            ax.set(ylabel="specialization (0..1)", title="domains: experts for one domain?", ylim=(0, 1.05))
            parts.append(("right: " if len(panels) > 1 else "") + "how much an expert's use depends on the text's "
                         "domain, averaged over experts (0 = the same in every domain, 1 = used in one domain only)")
    caption = "Expert specialization, " + "; ".join(parts) + "."
    return Figure("specialization", "Vocabulary and domain specialization", caption, _png(fig))


def gating(ev: Evidence) -> Figure:
    columns = 3 if ev.weights is not None else 2
    fig, axes = _axes(columns, height=3.6)
    axes = list(axes)
    parts = []
    if ev.weights is not None:
        ax = axes.pop(0)
        k = ev.model.top_k
        ax.bar(np.arange(1, k + 1), 100 * np.nanmean(ev.weights, axis=0))
        ax.axhline(100 / k, color="grey", **CHANCE)
        ax.set(xlabel="expert rank within the token", ylabel="share of routing weight (%)", title="weight over the k experts")
        parts.append(f"how a token's routing weight splits over its {k} experts (dashed: an even split)")
    ax = axes.pop(0)
    for layer, row in enumerate(ev.usage):
        size = ev.model.num_experts[layer]
        cumulative = np.cumsum(np.sort(row[:size])[::-1]) / max(row.sum(), 1)
        ax.plot(100 * np.arange(1, size + 1) / size, 100 * cumulative, color="C0", alpha=0.25, linewidth=0.8)
    ax.plot([0, 100], [0, 100], color="grey", **CHANCE)
    ax.set(xlabel="most used experts (% of the layer's)", ylabel="their share of requests (%)",
           title="usage skew (one line per layer)")
    parts.append(f"how much of a layer's traffic its most used experts take (dashed: all used equally; the top "
                 f"10 % take {100 * float(np.mean(ev.top_share)):.0f} %, and {int(ev.rare.sum())} of "
                 f"{int(sum(ev.model.num_experts))} experts get under a tenth of an even share, candidates for pruning)")
    ax = axes.pop(0)
    ax.grid(False)
    counts = ev.usage[ev.focus_layer]
    keep = np.argsort(-counts)[:16]
    lift = ev.co_firing[1][np.ix_(keep, keep)]
    image = ax.imshow(lift, cmap="magma", vmin=0, vmax=max(2.0, float(np.nanmax(lift)) if np.isfinite(lift).any() else 2.0))
    ax.set_xticks(range(len(keep)), [str(e) for e in keep], rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), [str(e) for e in keep], fontsize=7)
    ax.set_title(f"picked together, layer {ev.focus_layer}")
    fig.colorbar(image, ax=ax, label="lift (1 = independent)", pad=0.01)
    parts.append("which of the most used experts are picked for the same token more often than independent "
                 "choices would be (lift above 1)")
    caption = "The gating network's habits: " + "; ".join(parts) + "."
    return Figure("gating", "Gating behaviour", caption, _png(fig))


def figures_of(ev: Evidence) -> list[Figure]:
    """Every figure of one trace, in report order (specialization only where the trace allows)."""
    out = [locality(ev), hit_rates(ev), layer_heatmap(ev), routing(ev), balance(ev), specialization(ev),
           gating(ev)]
    return [f for f in out if f is not None]


def comparison(evs: list[Evidence]) -> Figure:
    fig, axes = _axes(3, height=3.8)
    names = [ev.label for ev in evs]
    x = np.arange(len(evs))
    pairs = (("SCH at 2x (%)", [100 * e.sch for e in evs], [100 * e.sch_chance_2x for e in evs]),
             (f"SRP({evs[0].m})", [e.srp_model.srp for e in evs], [e.srp_chance[e.m][0] for e in evs]))
    for ax, (title, measured, chance) in zip(axes, pairs):
        ax.bar(x - 0.2, measured, 0.4, label="measured")
        ax.bar(x + 0.2, chance, 0.4, color="grey", label="chance")
        ax.set_ylim(0, 1.3 * max(max(measured), max(chance)))  # room for the legend above the bars
        ax.set_title(title)
    ax = axes[2]
    ax.bar(x, [100 * e.engine_hit_rate("lru", OPERATING_POINT) for e in evs], 0.6, color="C2")
    ax.set_title("LRU hit rate at 2x, engine (%)")
    for ax in axes:
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    axes[0].legend(loc="upper left", ncol=2)
    caption = ("All models side by side: locality measured against chance (SCH at 2x the active experts and SRP; "
               "the gap between a model's two bars is its locality) and the hit rate an engine's LRU cache of 2x "
               "the active experts reaches.")
    return Figure("comparison", "All models compared", caption, _png(fig))
