"""Capture routing traces from Hugging Face MoE models: loading, model description, prefill.

Shape key: B sequences per batch, T tokens per sequence, L MoE layers, K top-k.

`capture_corpus` runs teacher-forced prefill over seeded corpus windows and streams each
sequence's routing into a trace (crash-safe shards; re-running the same call resumes and
skips finished sequences). `generate.capture_generation` covers prompt + decode. A seq2seq
model (Switch Transformers) has two stacks: they are written as OUT/encoder and OUT/decoder,
two ordinary traces, with OUT/stacks.json naming them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from ..atomic import write_json_atomic
from ..errors import CaptureInterrupted, ExpertcacheError
from .adapters import Adapter, MoEBlock, adapter_for, find_blocks
from .checkpoint import safetensors_headers
from .format import PREFILL, STACKS
from .hub import local_model_folder, not_cached, offline_reason
from .model_info import ModelInfo
from .recorder import RoutingRecorder
from .trace import Trace
from .writer import TraceWriter, remove_output

__all__ = ["CaptureResult", "LoadedModel", "capture_corpus", "committing", "describe", "ensure_loaded", "load_model",
           "open_writers", "optional_arrays", "trace_paths"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """A model ready for capture: the network, its family adapter, its MoE layers per stack."""

    name: str
    model: nn.Module
    adapter: Adapter
    blocks: list[MoEBlock]
    infos: dict[str, ModelInfo]  # stack -> description
    tokenizer: object | None = None

    @property
    def is_seq2seq(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def recorder(self, *, logits: bool = False, stale_gate: bool = False) -> RoutingRecorder:
        return RoutingRecorder(self.model, self.adapter, self.blocks, logits=logits, stale_gate=stale_gate)


@dataclass
class CaptureResult:
    """Where the traces went and how fast capture ran."""

    path: Path
    traces: dict[str, Path]  # stack -> trace directory
    new_tokens: int  # tokens captured by this run (resumed ones excluded)
    seconds: float  # time spent in forward passes
    skipped_sequences: int = 0
    details: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def load(self, stack: str | None = None) -> Trace:
        """The captured trace (of `stack`, for seq2seq models)."""
        if stack is None:
            if len(self.traces) != 1:
                raise ExpertcacheError(f"this capture holds stacks {sorted(self.traces)}; name one")
            stack = next(iter(self.traces))
        return Trace.load(self.traces[stack])


# ---------------------------------------------------------------------------- loading
def load_model(model_id: str | os.PathLike, *, device_map: str | None = None, dtype: str = "auto",
               trust_remote_code: bool = False, tokenizer: str | os.PathLike | None = None,
               need_tokenizer: bool = True) -> LoadedModel:
    """Load a hub id or local folder with `from_pretrained` and locate its MoE layers."""
    import transformers

    name = str(model_id)
    if dtype not in DTYPES:
        raise ExpertcacheError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    local = local_model_folder(name)
    if local is not None:
        safetensors_headers(local)  # a truncated file or a missing shard: one line now, not a traceback later
    offline = _offline(name)
    hub = dict(trust_remote_code=trust_remote_code, local_files_only=offline is not None)
    device_map, move_to = _placement(device_map)
    try:
        config = transformers.AutoConfig.from_pretrained(name, **hub)
    except (OSError, ValueError, KeyError) as e:
        raise ExpertcacheError(_load_error(name, e, offline)) from None
    checkpoint_dtype = _dtype_name(getattr(config, "dtype", None))
    auto = transformers.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else transformers.AutoModelForCausalLM
    try:
        model = auto.from_pretrained(name, dtype=dtype, device_map=device_map, **hub)
    except (OSError, ValueError, KeyError, ImportError, SafetensorError) as e:
        raise ExpertcacheError(_load_error(name, e, offline)) from None
    if move_to is not None:
        try:
            model.to(move_to)
        except (RuntimeError, AssertionError) as e:  # torch without that device's support asserts
            raise ExpertcacheError(f"cannot move {name} to {move_to}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.eval()
    if checkpoint_dtype == "unknown":
        checkpoint_dtype = _dtype_name(next(model.parameters()).dtype)
    adapter = adapter_for(model)
    blocks = find_blocks(model, adapter)
    if not blocks:
        raise ExpertcacheError(f"{name} ({type(model).__name__}) has no MoE layers")
    loaded = LoadedModel(name, model, adapter, blocks, describe(name, model, adapter, blocks, checkpoint_dtype))
    if need_tokenizer:
        loaded.tokenizer = _load_tokenizer(tokenizer or name, trust_remote_code)
    return loaded


def _placement(device_map: str | None) -> tuple[str | None, str | None]:
    """(device_map for from_pretrained, device to move to after loading).

    One device ("cpu", "cuda", "cuda:1") needs no accelerate: load, then move. "auto" and
    other accelerate maps (several GPUs, CPU offload) are passed through and need it.
    """
    if device_map in (None, "", "cpu"):
        return None, None
    if device_map.split(":")[0] in ("cuda", "mps", "xpu", "npu"):
        return None, device_map
    if importlib.util.find_spec("accelerate") is None:
        raise ExpertcacheError(f"device_map {device_map!r} needs accelerate: pip install 'expertcache[multi-gpu]'")
    return device_map, None


def _offline(name: str) -> str | None:
    """Why the hub cannot be asked for `name` (see hub.offline_reason); None for a local folder."""
    return None if Path(name).expanduser().is_dir() else offline_reason()


def _load_error(name: str, error: Exception, offline: str | None = None) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if offline is not None and isinstance(error, OSError):
        return not_cached(name, offline)
    if "custom code" in str(error) or "trust_remote_code" in str(error):
        return f"{name} ships its own modeling code; pass --trust-remote-code (trust_remote_code=True) if you trust it"
    if "does not recognize this architecture" in str(error) or "model_type" in str(error):
        return f"unknown architecture in {name}: {text} (a custom model needs --trust-remote-code)"
    return f"cannot load {name}: {text}"


def _load_tokenizer(name: str, trust_remote_code: bool):
    import transformers

    offline = _offline(name)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(name), trust_remote_code=trust_remote_code,
                                                          local_files_only=offline is not None)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if offline is not None and isinstance(e, OSError):
            raise ExpertcacheError(_load_error(name, e, offline)) from None
        raise ExpertcacheError(f"no usable tokenizer in {name} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                               "pass --tokenizer") from None


def _dtype_name(dtype) -> str:
    if dtype is None:
        return "unknown"
    return str(dtype).removeprefix("torch.")


def ensure_loaded(model: str | os.PathLike | LoadedModel, **load_options) -> LoadedModel:
    """`model` itself if already loaded (with a tokenizer), else `load_model(model, **load_options)`."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, **load_options)
    if loaded.tokenizer is None:
        raise ExpertcacheError(f"capturing {loaded.name} needs its tokenizer; load it with need_tokenizer=True")
    return loaded


def optional_arrays(logits: bool, stale_gate: bool) -> tuple[str, ...]:
    """The optional trace arrays asked for, in the trace format's order."""
    return tuple(name for name, wanted in (("logits", logits), ("stale_gate", stale_gate)) if wanted)


# ---------------------------------------------------------------------------- description
def context_length(config) -> int | None:
    """The longest sequence a model's positions cover, where its config says (None where not)."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def describe(name: str, model: nn.Module, adapter: Adapter, blocks: list[MoEBlock], dtype: str) -> dict[str, ModelInfo]:
    """One ModelInfo per stack: MoE layers, experts, k, shared experts, bytes of one expert and of
    the rest of each MoE layer (in the checkpoint dtype)."""
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size() if hasattr(torch, dtype) else None
    config = model.config
    architecture = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    infos = {}
    for stack in sorted({b.stack for b in blocks}, key=lambda s: s != "encoder"):
        mine = sorted((b for b in blocks if b.stack == stack), key=lambda b: b.layer)
        top_ks = {b.top_k for b in mine}
        if None in top_ks:
            top_ks = {_config_top_k(config)}
        if len(top_ks) != 1 or None in top_ks:
            raise ExpertcacheError(f"cannot tell the top-k of {name} (layers report {sorted(map(str, top_ks))})")
        infos[stack] = ModelInfo(
            name=name,
            architecture=architecture,
            num_layers=mine[0].num_layers,
            moe_layers=tuple(b.layer for b in mine),
            num_experts=tuple(b.num_experts for b in mine),
            top_k=top_ks.pop(),
            num_shared_experts=_shared_experts(mine[0], config),
            expert_bytes=tuple(_expert_bytes(b, itemsize) for b in mine),
            dense_bytes=tuple(_dense_bytes(b, itemsize) for b in mine),
            dtype=dtype,
            stack=stack,
            extra={"family": adapter.name, "model_type": config.model_type, "routing": adapter.routing,
                   "capture_source": "experts registry" if adapter.source == "experts" else "router hook"},
        )
    return infos


def _config_top_k(config) -> int | None:
    for key in ("num_experts_per_tok", "moe_top_k", "top_k"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return 1 if config.model_type == "switch_transformers" else None


def _shared_experts(block: MoEBlock, config) -> int:
    if block.shared is None:
        return 0
    n = getattr(config, "n_shared_experts", None)
    return int(n) if isinstance(n, int) else 1  # DeepSeek with n_shared_experts=0 keeps an empty shared module


def _expert_bytes(block: MoEBlock, itemsize: int | None) -> int:
    """Bytes of one routed expert: the experts' parameters divided by their count."""
    params = list(block.experts.parameters())
    numel = sum(p.numel() for p in params)
    size = itemsize or params[0].element_size()
    return int(numel * size // block.num_experts)


def _dense_bytes(block: MoEBlock, itemsize: int | None) -> int:
    """Bytes of the layer without its routed experts (attention, norms, router, shared experts)."""
    routed = {id(p) for p in block.experts.parameters()}
    params = [p for p in block.layer_module.parameters() if id(p) not in routed]
    return int(sum(p.numel() * (itemsize or p.element_size()) for p in params))


# ---------------------------------------------------------------------------- writing
def open_writers(loaded: LoadedModel, out: str | os.PathLike, *, capture: dict, corpus: dict | None,
                 domains: list[str] | None, optional: tuple[str, ...], overwrite: bool,
                 shard_tokens: int | None = None, commit_every: float | None = None) -> dict[str, TraceWriter]:
    """One TraceWriter per stack: OUT itself for one stack, OUT/<stack> for seq2seq models."""
    out = Path(out)
    stacks = list(loaded.infos)
    kwargs = dict(capture=capture, corpus=corpus, domains=domains, optional=optional, overwrite=overwrite,
                  commit_seconds=commit_every)
    if shard_tokens:
        kwargs["shard_tokens"] = shard_tokens
    if len(stacks) == 1:
        return {stacks[0]: TraceWriter(out, loaded.infos[stacks[0]], **kwargs)}
    if out.exists() and overwrite:
        remove_output(out)
    if out.exists() and not (out / STACKS).is_file() and any(out.iterdir()):
        raise ExpertcacheError(f"{out} exists and is not a capture of a seq2seq model; choose another output")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / STACKS, {
        "note": "a seq2seq model: each stack is a separate trace in the folder of its name",
        "stacks": stacks, "model": loaded.name,
    })
    return {stack: TraceWriter(out / stack, loaded.infos[stack], **{**kwargs, "overwrite": False}) for stack in stacks}


@contextmanager
def committing(writers: dict[str, TraceWriter], keys: list[str], out: str | os.PathLike):
    """Close (commit) the writers however the block ends; Ctrl-C then becomes CaptureInterrupted,
    which says how many of the sequences `keys` are stored."""
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for writer in writers.values():
            writer.close()
    if interrupted:
        stored = set.intersection(*(w.done_keys for w in writers.values()))
        raise CaptureInterrupted(Path(out), len(stored & set(keys)), len(keys))


def trace_paths(out: str | os.PathLike) -> dict[str, Path]:
    """stack -> trace directory of a capture output (one trace, or the stacks of a seq2seq model)."""
    out = Path(out)
    if (out / STACKS).is_file():
        stacks = json.loads((out / STACKS).read_text())["stacks"]
        return {s: out / s for s in stacks}
    return {"decoder": out}


# ---------------------------------------------------------------------------- prefill
def capture_corpus(
    model: str | os.PathLike | LoadedModel,
    corpus: list[str],
    out: str | os.PathLike,
    *,
    samples: int = 16,
    length: int = 512,
    seed: int = 0,
    device_map: str | None = None,
    dtype: str = "auto",
    logits: bool = False,
    stale_gate: bool = False,
    overwrite: bool = False,
    batch_tokens: int = 8192,
    tokenizer: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    shard_tokens: int | None = None,
    commit_every: float | None = 60.0,
    progress: bool = False,
) -> CaptureResult:
    """Teacher-forced prefill over `samples` windows of `length` tokens from each corpus source.

    Finished sequences are committed every `commit_every` seconds (and every `shard_tokens`
    tokens), so a kill loses at most that much work plus one forward pass; Ctrl-C commits them
    and raises CaptureInterrupted. Running the same call again resumes."""
    from .corpus import corpus_description, open_sources, sample_windows

    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise ExpertcacheError(f"batch_tokens (tokens per forward pass) must be a whole number >= 1, got {batch_tokens!r}")
    domains = open_sources(list(corpus))  # a bad source fails before the model loads
    loaded = ensure_loaded(model, device_map=device_map, dtype=dtype, trust_remote_code=trust_remote_code,
                           tokenizer=tokenizer)
    context = context_length(loaded.model.config)
    if context and length > context:
        raise ExpertcacheError(f"windows of {length} tokens exceed {loaded.name}'s context of {context} tokens")
    windows = list(sample_windows(domains, loaded.tokenizer, samples, length, seed))
    _check_vocab(loaded, max(int(w.token_ids.max()) for w in windows))
    settings = {"mode": "prefill", "samples_per_domain": samples, "length": length, "seed": seed,
                "dtype": dtype, "model": loaded.name}
    optional = optional_arrays(logits, stale_gate)
    writers = open_writers(loaded, out, capture=settings, corpus=corpus_description(domains),
                           domains=[d.name for d in domains], optional=optional, overwrite=overwrite,
                           shard_tokens=shard_tokens, commit_every=commit_every)
    done = set.intersection(*(w.done_keys for w in writers.values()))
    todo = [w for w in windows if w.key not in done]
    batch = max(1, batch_tokens // length)
    seconds, new_tokens = 0.0, 0
    with committing(writers, [w.key for w in windows], out):
        with loaded.recorder(logits=logits, stale_gate=stale_gate) as recorder, ProgressBar(progress, len(todo) * length) as bar:
            for start in range(0, len(todo), batch):
                chunk = todo[start:start + batch]
                ids = torch.from_numpy(np.stack([w.token_ids for w in chunk])).long()  # [B, T]
                t0 = time.perf_counter()
                inputs = _prefill_inputs(loaded, ids.to(loaded.input_device))
                with torch.inference_mode():
                    loaded.model.base_model(**inputs, use_cache=False)
                routed = {stack: recorder.take(stack) for stack in writers}
                seconds += time.perf_counter() - t0
                for stack, writer in writers.items():
                    tokens = inputs["decoder_input_ids" if stack == "decoder" and loaded.is_seq2seq else "input_ids"]
                    _add_batch(writer, routed[stack], tokens.cpu().numpy(), chunk, PREFILL)
                new_tokens += ids.numel()
                bar(ids.numel(), new_tokens / seconds)
    return CaptureResult(Path(out), trace_paths(out), new_tokens, seconds, len(windows) - len(todo))


def _check_vocab(loaded: LoadedModel, max_id: int) -> None:
    vocab = loaded.model.get_input_embeddings().num_embeddings
    if max_id >= vocab:
        raise ExpertcacheError(f"the tokenizer produced id {max_id}, but {loaded.name} has only {vocab} embeddings; "
                               "use the model's own tokenizer")


def _prefill_inputs(loaded: LoadedModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    if not loaded.is_seq2seq:
        return {"input_ids": ids}
    # Teacher forcing for an encoder-decoder: the decoder reads the same window shifted right.
    return {"input_ids": ids, "decoder_input_ids": loaded.model.prepare_decoder_input_ids_from_labels(labels=ids)}


def _add_batch(writer: TraceWriter, routed: dict[str, np.ndarray], tokens: np.ndarray, chunk, phase: int) -> None:
    B, T = tokens.shape
    if len(routed["experts"]) != B * T:
        raise ExpertcacheError(f"recorded routing for {len(routed['experts'])} tokens of {B * T} fed: the model's experts "
                               "bypass both the experts registry and the router hook (e.g. hub kernels); load it without them")
    arrays = {name: value.reshape(B, T, *value.shape[1:]) for name, value in routed.items()}  # [B, T, L, ...]
    for b, window in enumerate(chunk):
        writer.add_sequence(
            arrays["experts"][b], arrays["weights"][b], tokens=tokens[b], phase=phase, domain=window.domain,
            key=window.key, **{n: arrays[n][b] for n in ("logits", "stale_gate") if n in arrays},
        )


class ProgressBar:
    """A rich progress bar over tokens or forward passes (or nothing); call it with (done, tokens/s)."""

    def __init__(self, enabled: bool, total: int, what: str = "capturing", unit: str = "tokens"):
        self.enabled, self.total, self.what, self.unit = enabled, total, what, unit

    def __enter__(self):
        if not self.enabled:
            return lambda advance, rate: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit),
                             TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=False)
        self._bar.start()
        task = self._bar.add_task(self.what, total=self.total, rate="")
        return lambda advance, rate: self._bar.update(task, advance=advance, rate=f"{rate:,.0f} tok/s")

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
