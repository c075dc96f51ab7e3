"""`offload`: a Hugging Face MoE model whose routed experts live in a bounded cache.

    route (stock router) -> resolve residency (engine step) -> fetch misses -> compute (stock
    experts forward on slots; misses kept at the source on its host copy) -> combine; the
    next layer's prefetch is issued before each computation and overlaps it, and a call's
    resident experts are computed while its misses are read (where computing a call in two
    chunks costs nothing extra: grouped_mm and dense, not eager)

The returned model is the ordinary transformers model (its `generate()`, tokenizer and chat
template work as usual) with the offloaded experts implementation selected; `stats(model)`
gives the counters so far with the field names of `simulate`'s result, and `trace=` records
the run's routing so that `simulate` on it reproduces them exactly.

Shape key: T tokens of a forward, L MoE layers, K top-k, E experts.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache.budget import resolve_budget
from ..cache.policies import POLICIES, resolve_policy
from ..cache.prefetch import PrefetchReport
from ..cache.simulate import HitCounts
from ..cache.stream import key_layers, key_offsets
from ..devices import torch_device
from ..errors import ExpertcacheError
from ..trace.format import DECODE, PREFILL
from ..trace.hub import local_model_folder, not_cached, offline_reason
from ..units import size_text
from .cache import ExpertCache
from .experts import DENSE, IMPLEMENTATIONS, slot_compute
from .loading import LoadedCheckpoint, load_checkpoint
from .placement import misses_on_cpu_below
from .prefetchers import PredictionTally, online_prefetcher
from .recording import RUN_SOURCE, RunRecording
from .store import TIERS, ExpertStore


__all__ = ["offload", "stats", "OffloadStats", "REGISTRY_NAME", "close"]

REGISTRY_NAME = "expertcache_offload"
_ENTRY = "_expertcache_layer"  # on each offloaded experts module: (runtime, MoE layer) until closed


def _offloaded_experts(module, hidden_states, top_k_index=None, top_k_weights=None, *args, **kwargs):
    """The registry's experts function (or, for families outside it, the experts module's forward)."""
    entry = getattr(module, _ENTRY, None)
    if entry is None:
        raise ExpertcacheError("this model's experts were offloaded by a runtime that is closed")
    runtime, layer = entry
    if top_k_index is None:  # outside the registry: the routing (and router input) the router hook just read
        top_k_index, top_k_weights, layer_input = runtime.routed
    else:
        layer_input = hidden_states
    return runtime.experts_call(layer, module, hidden_states, top_k_index, top_k_weights, layer_input)


@dataclass
class OffloadStats(HitCounts):
    """Counters of a run so far, named as in `SimulationResult` (strict accounting)."""

    policy: str
    scope: str
    accounting: str
    budget_bytes: int | None
    budget_slots: int | None
    lookups: int
    hits: int
    decode_lookups: int
    decode_hits: int
    bytes_read: int
    misses_on_cpu: int
    prefetch: PrefetchReport | None
    experts_implementation: str
    misses_on_cpu_below: int
    timings: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The keys of `simulate --json` (same order), then how experts were computed, timings and memory."""
        prefetch = None if self.prefetch is None else self.prefetch.to_json()
        return {**self.counters_json(prefetch), "experts_implementation": self.experts_implementation,
                "misses_on_cpu_below": self.misses_on_cpu_below, "timings": self.timings, "memory": self.memory}


class Runtime:
    """Everything one offloaded model needs: cache, store, prefetcher, trace recording, timing."""

    def __init__(self, ckpt: LoadedCheckpoint, cache: ExpertCache, store: ExpertStore, policy_name: str, scope: str,
                 prefetch: str | None, trace_path, slow_tier: str, implementation: str):
        self.ckpt, self.cache, self.store = ckpt, cache, store
        self.implementation = implementation
        self.compute = slot_compute(implementation, cache.pools)
        self.routed = None  # (ids, weights, its input) of the last router outside the registry
        self.policy_name, self.scope, self.slow_tier = policy_name, scope, slow_tier
        info = ckpt.info
        self.L, self.K, self.E = info.num_moe_layers, info.top_k, max(info.num_experts)
        self.offset = cache.key_offset
        self.sort_by_weight = ckpt.adapter.score_order == "weights"
        self.prefetch_name = prefetch
        self.prefetcher = None if prefetch is None else online_prefetcher(prefetch, self.L, self.E, self.K)
        self.want_stale = self.prefetcher is not None and self.prefetcher.needs_stale_gate
        self.tally = PredictionTally()
        self.recording = None if trace_path is None else RunRecording(
            trace_path, info, {"policy": policy_name, "misses_on_cpu_below": cache.misses_on_cpu_below},
            self.want_stale)
        self.finalizer: weakref.finalize | None = None  # set by offload()
        self._forward: dict | None = None
        self.timings = {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0}
        self._forward_start = 0.0

    # ------------------------------------------------------------------ model hooks
    def before_forward(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = tuple(ids.shape) if ids is not None else tuple(embeds.shape[:2])
        if shape[0] != 1:
            raise ExpertcacheError("the offloading runtime generates one sequence at a time (batch size 1)")
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.2x names it `cache`
        new = past is None or past.get_seq_length() == 0
        if new and self.recording is not None:
            self.recording.end_sequence()
        if new and self.prefetcher is not None:
            self.prefetcher.start_sequence()
        T = shape[1]
        self._forward = {
            "phase": PREFILL if new else DECODE, "T": T,
            "tokens": ids.reshape(-1).cpu().numpy() if ids is not None else np.full(T, -1),
            "experts": np.full((T, self.L, self.K), -1, np.int64),
            "weights": np.zeros((T, self.L, self.K), np.float32) if self.recording is not None else None,
            "stale": np.full((T, self.L, self.E), np.nan, np.float32) if self.want_stale and self.recording is not None else None,
        }
        if not new and self.prefetcher is not None:  # the prefetch after the previous token's last layer
            with self._engine_ahead():
                self._prefetch(0, None)
        self._forward_start = time.perf_counter()

    def after_forward(self, module, args, kwargs, output) -> None:
        f = self._forward
        if f is None:
            return
        seconds = time.perf_counter() - self._forward_start
        label = "prefill" if f["phase"] == PREFILL else "decode"
        self.timings[f"{label}_tokens"] += f["T"]
        self.timings[f"{label}_s"] += seconds
        if self.prefetcher is not None:
            for t in range(f["T"]):
                self.prefetcher.end_token(f["experts"][t])
        self._forward = None
        if self.recording is not None:
            self.recording.add_forward({**f, "phase": np.full(f["T"], f["phase"], np.uint8)})

    # ------------------------------------------------------------------ one MoE layer call
    def read_router(self, router, args, output) -> None:
        """Forward hook on a router outside the registry: keep the ids and weights it chose, and its
        input: the layer's input, which the stale gate reads (its experts get other rows, Llama4's
        router-scaled [E * T, H])."""
        self.routed = (*self.ckpt.adapter.read_router(router, output), args[0])

    def experts_call(self, layer, module, hidden, top_k_index, top_k_weights, layer_input):
        K = top_k_index.shape[-1]
        ids = top_k_index.reshape(-1, K).tolist()  # [T][K]: a decode call's few ids cost less as Python ints
        weights = None
        if self.sort_by_weight or self.recording is not None:
            weights = top_k_weights.reshape(-1, K).tolist()
        if self.sort_by_weight:  # lookup order = the trace's order: descending weight
            ids, weights = _by_descending_weight(ids, weights)
        f = self._forward
        if f is not None and len(ids) == f["T"]:
            f["experts"][:, layer, :K] = ids
            if self.recording is not None:
                f["weights"][:, layer, :K] = weights
        offset = int(self.offset[layer])
        keys = np.array([offset + e for row in ids for e in row if e >= 0], np.int64)
        decode = f is not None and f["phase"] == DECODE
        if decode and self.prefetcher is not None:
            self.tally.called(layer, keys.tolist())
        plan = self.cache.lookup(keys, decode)
        with self._engine_ahead():
            return self._compute(layer, module, hidden, top_k_index, top_k_weights, layer_input, keys, plan)

    @contextmanager
    def _engine_ahead(self):
        """Around what follows an engine step: if it stops midway (a read failed, an interrupt),
        the engine has moved on but the slots may not hold what it says (reads unfinished,
        chunks or prefetches not started), so no later call may compute with them."""
        try:
            yield
        except BaseException:
            self.cache.failed = True
            raise

    def _compute(self, layer, module, hidden, top_k_index, top_k_weights, layer_input, keys, plan):
        """One layer call's fetches, computation and next prefetch, as the engine planned them."""
        cache = self.cache
        layer_slots = cache.slot_of[self.offset[layer]:self.offset[layer + 1]]  # [E] view, updated by fetches
        prefetch = layer + 1 < self.L and self.prefetcher is not None
        if plan is None or (plan.chunks == 1 and not plan.at_source.any()):
            # one computation: the next layer's prefetch is issued first and overlaps it (its
            # evictions of this call's experts wait for the computation; the counters do not change)
            if plan is not None:
                cache.start(plan, 0)
            if prefetch:
                self._prefetch(layer + 1, layer_input if self.want_stale else None, in_use=keys)
            late = None if plan is None or not self.compute.chunks_cost_nothing else cache.in_flight(plan, 0)
            if late is not None and late.any() and not late.all():
                # the resident experts are computed while the others are still being read
                out = self.compute.chunked(module, self._resident_first(plan, late, layer, layer_slots), hidden,
                                           top_k_index, top_k_weights)
            else:
                if plan is not None:
                    cache.wait(plan, 0)
                out = self.compute.whole(module, layer_slots, hidden, top_k_index, top_k_weights)
            if prefetch:
                cache.settle()
        else:
            out = self.compute.chunked(module, self._chunks(plan, layer, layer_slots), hidden, top_k_index,
                                       top_k_weights)
            if prefetch:
                self._prefetch(layer + 1, layer_input if self.want_stale else None)
        return out

    def _chunks(self, plan, layer, layer_slots):
        """(experts, expert -> row, pools) per chunk: the cache's chunks, then the misses kept at the source."""
        for c in range(plan.chunks):
            self.cache.prepare(plan, c)
            experts = self._experts(layer, plan.keys[(plan.chunk == c) & ~plan.at_source])
            if experts:
                yield experts, layer_slots, self.cache.pools
        if plan.at_source.any():
            host = self.store.host_pools[layer]
            yield self._experts(layer, plan.keys[plan.at_source]), np.arange(host.zero), host

    def _experts(self, layer: int, keys: np.ndarray) -> list[int]:
        """The layer's expert ids of cache keys."""
        return (keys - self.offset[layer]).tolist()

    def _resident_first(self, plan, late, layer, layer_slots):
        """The chunks of a one-chunk call: its resident experts, then (once read) those in flight."""
        for part in (~late, late):
            if part is late:
                self.cache.wait(plan, 0)
            yield self._experts(layer, plan.keys[part]), layer_slots, self.cache.pools

    def _prefetch(self, layer: int, earlier_input, in_use: np.ndarray | None = None) -> None:
        """Predict for (current token, layer) and issue the loads; decode steps only, as in the simulator.
        earlier_input: the previous layer's router input, for the stale gate (None: no scores);
        in_use: the keys of a layer call still to compute (see `ExpertCache.prefetch`)."""
        f = self._forward
        decode = f is not None and f["phase"] == DECODE
        stale = None
        if self.want_stale and earlier_input is not None and (decode or self.recording is not None):  # else unread
            block = self.ckpt.blocks[layer]
            with torch.no_grad():
                x = earlier_input.reshape(-1, earlier_input.shape[-1])
                scores = self.ckpt.adapter.stale_gate(block.router, x)
            scores = scores.float().numpy(force=True)  # [T, E]
            if f is not None and self.recording is not None:
                f["stale"][:, layer, :scores.shape[1]] = scores
            stale = scores[-1]
        if not decode or (self.want_stale and stale is None):
            return
        predicted = self.prefetcher.predict(layer, stale)
        keys = self.offset[layer] + predicted[predicted >= 0]
        self.tally.predict(layer, keys.tolist())
        self.cache.prefetch(keys, in_use)

    def close(self) -> None:
        """Finish the trace (the partial sequence too) and release files and threads."""
        self.cache.drain()
        if self.finalizer is not None:
            self.finalizer.detach()
        _finish(self.recording, self.store)  # errors raise here, where the finalizer could only print them

    def stats(self) -> OffloadStats:
        c, b = self.cache.counters, self.cache.budget
        pf = None
        if self.prefetcher is not None:  # distance 1: the loads for a layer call start during the one before it
            issued, used, wasted, nbytes, wasted_bytes = self.cache.prefetch_counts()
            pf = PrefetchReport(self.prefetch_name, self.prefetcher.count, 1, 0, issued, used, wasted, nbytes,
                                wasted_bytes, used / issued if issued else math.nan, *self.tally.precision_recall())
        t = dict(self.timings)
        t["prefill_tokens_per_s"] = t["prefill_tokens"] / t["prefill_s"] if t["prefill_s"] else None
        t["decode_tokens_per_s"] = t["decode_tokens"] / t["decode_s"] if t["decode_s"] else None
        expert_total = int(sum(self.ckpt.info.expert_bytes[i] * self.ckpt.info.num_experts[i] for i in range(self.L)))
        memory = {"fast_device": str(self.cache.device), "non_expert_bytes": self.ckpt.non_expert_bytes,
                  "cache_bytes": self.cache.resident_bytes, "slots": self.cache.num_slots,
                  "slow_tier": self.slow_tier, "slow_tier_bytes": expert_total, "peak_rss_bytes": _peak_rss()}
        if self.cache.device.type == "cuda":
            memory["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(self.cache.device))
        return OffloadStats(self.policy_name, self.scope, "strict", b.budget_bytes, b.budget_slots, c.lookups, c.hits,
                            c.decode_lookups, c.decode_hits, c.bytes_read, c.misses_on_cpu, pf, self.implementation,
                            self.cache.misses_on_cpu_below, t, memory)


def _by_descending_weight(ids: list[list[int]], weights: list[list[float]]) -> tuple[list, list]:
    """Each token's ids and weights in descending weight, ties in routing order (a stable sort);
    a token whose router already gave them so (top-k does) costs one pass. ids, weights: [T][K]."""
    out_ids, out_weights = [], []
    for row, w in zip(ids, weights):
        if any(a < b for a, b in zip(w, w[1:])):
            order = sorted(range(len(w)), key=w.__getitem__, reverse=True)  # reverse keeps ties in order
            row, w = [row[j] for j in order], [w[j] for j in order]
        out_ids.append(row)
        out_weights.append(w)
    return out_ids, out_weights


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ---------------------------------------------------------------------------- public API
def offload(model: str | os.PathLike, *, budget_mib: float | None = None, budget_slots: int | None = None,
            budget_x: float | None = None, policy="lru", scope: str | None = None, prefetch: str | None = None,
            device: str = "cpu", slow_tier: str | None = None, trace: str | os.PathLike | None = None,
            experts_implementation: str | None = None, misses_on_cpu: str | int = "never"):
    """Load MODEL (hub id or local folder) with its routed experts in a bounded cache.

    One budget, as in `simulate`: MiB, experts (slots), or a multiple of the active experts
    (k per MoE layer). The cache lives on `device` ("cpu": RAM, experts read from disk;
    "cuda": GPU memory, experts in pinned host RAM); `slow_tier` overrides where uncached
    experts come from ("disk" or "ram"). Experts are computed with `experts_implementation`
    ("grouped_mm" or "eager"; default: the one transformers picks for the plain model), with
    the same bits as the plain model using it. `misses_on_cpu` ("never", "auto", "always", or a
    number of tokens; needs the "ram" tier) computes a missed expert on the CPU from its copy in RAM instead of
    moving it: "auto" when that is cheaper for the tokens that use it (placement.py), so in
    practice decode misses on a GPU. Returns the transformers model, ready for `generate()`.
    """
    fast = torch_device(device)
    if trace is not None:
        _check_trace_output(Path(trace))
    tier = slow_tier or ("ram" if fast.type == "cuda" else "disk")
    if tier not in TIERS:
        raise ExpertcacheError(f"unknown slow tier {tier!r}; choose disk or ram")
    policy_obj, scope = online_policy(policy, scope)
    folder = local_folder(model)
    ckpt = load_checkpoint(folder, fast)
    implementation = _implementation(ckpt, experts_implementation)
    info = ckpt.info
    key_offset = key_offsets(info)
    key_layer = key_layers(key_offset)
    budget = resolve_budget(info, key_layer, scope, budget_mib=budget_mib, budget_slots=budget_slots,
                            budget_x=budget_x)
    _check_minimum(budget, info)
    store = ExpertStore(folder, ckpt.parts, tier, ckpt.params, ckpt.layer_residues, device=fast)
    try:
        below = misses_on_cpu_below(misses_on_cpu, fast, store.host_pools and store.host_pools[0],
                                    int(max(info.expert_bytes)))
        cache = ExpertCache(policy_obj, budget, info.num_moe_layers, key_offset,
                            np.asarray(info.expert_bytes, np.int64)[key_layer], ckpt.params, ckpt.residues(key_offset),
                            store, fast, below)
        runtime = Runtime(ckpt, cache, store, policy_obj.name, scope, prefetch, trace, tier, implementation)
    except BaseException:
        store.close()
        raise
    _install(runtime)
    # a model dropped without close() (once collected) or alive at exit: its trace is finished and
    # its read threads and files go with it (recording and store hold no reference back to the
    # model, which would keep it alive); close() detaches this and does the same itself
    runtime.finalizer = weakref.finalize(ckpt.model, _finish_unclosed, runtime.recording, store)
    return ckpt.model


def _finish(recording: RunRecording | None, store: ExpertStore) -> None:
    try:
        if recording is not None:
            recording.close()
    finally:
        store.close()


def _finish_unclosed(recording: RunRecording | None, store: ExpertStore) -> None:
    """_finish for a model never closed: an error is one line on stderr (a finalizer cannot raise)."""
    try:
        _finish(recording, store)
    except Exception as e:
        print(f"expertcache: could not finish the trace at {recording.path}: {e}" if recording is not None
              else f"expertcache: could not release an offloaded model's files: {e}", file=sys.stderr)


def online_policy(policy, scope: str | None):
    """(policy object, scope) for a live model, checked before loading: no policy that reads the
    future of a trace, and `static` only as an object holding its frequency profile."""
    online = sorted(n for n, cls in POLICIES.items() if not cls.uses_future and n != "static")
    if isinstance(policy, str) and (name := policy.strip().lower().removeprefix("layer-")) not in online:
        if name == "static":
            why = "it needs a frequency profile, given in Python as StaticFrequency(profile=counts)"
        elif name in POLICIES:
            why = "it reads the future of a trace: an offline bound"
        else:
            why = "no such policy"
        raise ExpertcacheError(f"the runtime cannot run policy {policy!r} ({why}); choose from {', '.join(online)}")
    policy_obj, scope = resolve_policy(policy, scope)
    if policy_obj.uses_future:
        raise ExpertcacheError(f"the runtime cannot run policy {policy_obj.name!r} (it reads the future of a trace: "
                               "an offline bound); choose an online policy such as lru or lfu")
    return policy_obj, scope


def _install(runtime: Runtime) -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    model = runtime.ckpt.model
    for layer, block in enumerate(runtime.ckpt.blocks):
        setattr(block.experts, _ENTRY, (runtime, layer))  # on the module: freed with the model, no registry
    if runtime.implementation == DENSE:  # the router's choice is read from its output, then the experts call
        for block in runtime.ckpt.blocks:
            block.router.register_forward_hook(runtime.read_router)
            block.experts.forward = functools.partial(_offloaded_experts, block.experts)
    else:
        if REGISTRY_NAME not in ALL_EXPERTS_FUNCTIONS:
            ALL_EXPERTS_FUNCTIONS.register(REGISTRY_NAME, _offloaded_experts)
        model.set_experts_implementation(REGISTRY_NAME)
    model.register_forward_pre_hook(runtime.before_forward, with_kwargs=True)
    model.register_forward_hook(runtime.after_forward, with_kwargs=True)
    model._expertcache_runtime = runtime


def _runtime(model) -> Runtime:
    runtime = getattr(model, "_expertcache_runtime", None)
    if runtime is None:
        raise ExpertcacheError("this model was not made by expertcache.offload")
    return runtime


def stats(model) -> OffloadStats:
    """The counters of an offloaded model so far (field names of `simulate`'s result)."""
    return _runtime(model).stats()


def close(model) -> None:
    """Finish the model's trace and release its files; the model cannot run afterwards."""
    runtime = _runtime(model)
    runtime.close()
    for block in runtime.ckpt.blocks:
        block.experts.__dict__.pop(_ENTRY, None)


def _check_trace_output(path: Path) -> None:
    """A run's trace replaces an earlier run's at the same path, and nothing else: not a capture
    (which may have taken hours), not a folder of other files."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        from ..trace.writer import trace_manifest

        source = ((trace_manifest(path) or {}).get("capture") or {}).get("source")
        if source != RUN_SOURCE:
            raise ExpertcacheError(f"{path} exists and is not a trace of `expertcache run`; choose another output")


def local_folder(model: str | os.PathLike) -> Path:
    """A local checkpoint folder: MODEL itself, or its hub snapshot (weights, config, tokenizer)."""
    path = local_model_folder(model)
    if path is not None:
        return path
    offline = offline_reason()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                    "*.jinja", "tokenizer*"],
                                      local_files_only=offline is not None))
    except Exception as e:  # hub errors come in many types; all mean the same to a user
        if offline is not None:
            raise ExpertcacheError(not_cached(str(model), offline)) from None
        raise ExpertcacheError(f"cannot fetch {model} from the hub: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _implementation(ckpt: LoadedCheckpoint, requested: str | None) -> str:
    """The experts implementation the plain model would run (transformers' choice by default)."""
    if ckpt.adapter.source == "router":
        if requested is not None:
            raise ExpertcacheError(f"{ckpt.adapter.name} computes its experts itself, outside transformers' experts "
                                   "registry: there is no experts implementation to choose")
        return DENSE
    chosen = requested or ckpt.model.get_correct_experts_implementation(None)
    if chosen not in IMPLEMENTATIONS:
        raise ExpertcacheError(f"the runtime computes experts with {' or '.join(IMPLEMENTATIONS)}, not {chosen!r}")
    return chosen


def _check_minimum(budget, info) -> None:
    """Every pool must hold one layer call's k experts of its largest layer."""
    for _, limit, cost in budget.pools():
        need = int(info.top_k * cost.max())
        if limit < need:
            if budget.unit == "slots":
                room, needed = f"{limit} expert slot{'s' if limit != 1 else ''}", ""
            else:
                room, needed = size_text(limit), size_text(need)
                if room == needed:  # exact bytes where the rounded sizes read the same
                    room, needed = f"{limit:,} bytes", f"{need:,} bytes"
                needed = f" ({needed})"
            raise ExpertcacheError(f"the budget gives a pool {room}; one layer call needs {info.top_k} experts{needed}: "
                                   "raise the budget")
