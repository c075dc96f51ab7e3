"""Load a checkpoint without materializing its routed experts.

The model is built from its config with parameters on the meta device (buffers such as rotary
`inv_freq` stay real); every non-expert tensor is read from the safetensors files onto the fast
device, and every routed expert is *indexed*: the byte ranges that hold it in the checkpoint,
found by running each checkpoint key through transformers' own key conversion (the mapping
`from_pretrained` uses), for per-expert layouts (`experts.3.gate_proj.weight`, merged and
concatenated on load) and fused ones (`experts.gate_up_proj` [E, ...]) alike.

Shape key: E experts of a layer, L MoE layers.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..cache.stream import key_layers
from ..errors import ExpertcacheError
from ..trace.adapters import MoEBlock, adapter_for, find_blocks
from ..trace.capture import describe
from ..trace.checkpoint import safetensors_headers
from ..trace.model_info import ModelInfo

__all__ = ["ExpertParam", "ExpertPart", "LoadedCheckpoint", "SlotPool", "load_checkpoint", "expert_zeros"]

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_PAGE = 4096  # a memory map starts at a page boundary
LINE = 64  # experts: the alignment a row's products can depend on (see `_zeros_at`)


class ExpertParam(NamedTuple):
    """One experts-module parameter: each expert's shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class ExpertPart:
    """One contiguous byte range of one expert: `nbytes` at `offset` of `file` fill bytes
    [dest, dest + nbytes) of that expert's slice of the experts module's parameter `param`."""

    param: str
    file: str
    offset: int
    nbytes: int
    dest: int


@dataclass
class LoadedCheckpoint:
    name: str
    model: nn.Module  # routed experts still on meta
    adapter: object
    blocks: list[MoEBlock]  # MoE layers, in order
    info: ModelInfo
    parts: list[list[list[ExpertPart]]]  # [L][E] the byte ranges of each expert
    params: dict[str, ExpertParam]  # experts-module parameter -> per-expert shape and dtype
    layer_residues: dict[str, list[int]]  # parameter -> [L] address of the stock's expert 0 modulo LINE
    non_expert_bytes: int

    def residues(self, key_offset: np.ndarray) -> dict[str, np.ndarray]:
        """parameter -> [K] where the stock model keeps each expert's tensor, modulo LINE: expert e
        of layer l follows expert 0 at e x its bytes (a fused tensor on disk, or per-expert ones
        stacked on load)."""
        layer_of = key_layers(key_offset)
        expert = np.arange(int(key_offset[-1])) - key_offset[layer_of]
        return {name: (np.asarray(self.layer_residues[name])[layer_of] + expert * param.nbytes) % LINE
                for name, param in self.params.items()}


def load_checkpoint(path: str | os.PathLike, device: torch.device) -> LoadedCheckpoint:
    """Build the model of a local checkpoint folder with its experts indexed, not loaded."""
    import transformers

    folder = Path(path)
    headers = _read_headers(folder)
    config = read_config(folder)
    if getattr(config, "is_encoder_decoder", False):
        raise ExpertcacheError(f"{path} is an encoder-decoder model; the runtime runs decoder-only MoE models")
    dtype = _checkpoint_dtype(headers)
    with _parameters_on_meta():
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if (folder / "generation_config.json").is_file():  # as from_pretrained: the model's own stop tokens and defaults
        try:
            model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise ExpertcacheError(f"{folder / 'generation_config.json'}: {str(e).splitlines()[0]}") from None
    adapter = adapter_for(model)
    blocks = [b for b in find_blocks(model, adapter) if b.stack == "decoder"]
    if not blocks:
        raise ExpertcacheError(f"{path} ({type(model).__name__}) has no routed experts")
    info = describe(str(path), model, adapter, blocks, str(dtype).removeprefix("torch."))["decoder"]
    expert_params = {f"{b.path}.experts.{n}": (i, n) for i, b in enumerate(blocks)
                     for n, _ in b.experts.named_parameters(recurse=False)}
    params = _param_shapes(blocks)
    parts, sources, fused = _index(model, headers, expert_params, blocks, params)
    residues = {name: [_stock_residue(layer, name) if name in fused else 0 for layer in parts] for name in params}
    non_expert = _load_non_experts(model, folder, headers, sources, expert_params, device)
    return LoadedCheckpoint(str(path), model, adapter, blocks, info, parts, params, residues, non_expert)


def read_config(folder: Path):
    """The folder's transformers config; one transformers cannot read is a one-line error."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:  # no model_type, an unknown one, not JSON
        raise ExpertcacheError(f"{Path(folder) / 'config.json'}: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------- safetensors headers
def _read_headers(folder: Path) -> dict[str, tuple[int, dict]]:
    """file name -> (data start, header) for every safetensors file of the checkpoint."""
    if not folder.is_dir():
        raise ExpertcacheError(f"model folder {folder} does not exist")
    headers = safetensors_headers(folder)
    if not headers:
        raise ExpertcacheError(f"{folder} has no safetensors weights (the runtime reads experts from .safetensors files)")
    return headers


def _checkpoint_dtype(headers) -> torch.dtype:
    seen = {e["dtype"] for _, h in headers.values() for k, e in h.items() if k != "__metadata__"}
    for code in ("BF16", "F16", "F32"):  # the narrowest float type is the weights' type
        if code in seen:
            return _DTYPES[code]
    raise ExpertcacheError(f"unsupported checkpoint dtypes {sorted(seen)}; the runtime reads fp32, bf16 and fp16")


@contextmanager
def _parameters_on_meta():
    """Create every nn.Parameter on the meta device while the model is built; buffers stay real."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=False)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _param_shapes(blocks: list[MoEBlock]) -> dict:
    """Per-expert shape and dtype of each experts-module parameter; the same in every layer."""
    shapes = None
    for b in blocks:
        mine = {n: ExpertParam(tuple(p.shape[1:]), p.dtype) for n, p in b.experts.named_parameters(recurse=False)}
        if any(p.shape[0] != b.num_experts for p in b.experts.parameters(recurse=False)):
            raise ExpertcacheError(f"{b.path}.experts does not stack its experts on the first dimension")
        if shapes is not None and mine != shapes:
            raise ExpertcacheError("MoE layers with differently shaped experts are not supported by the runtime yet")
        shapes = mine
    return shapes


# ---------------------------------------------------------------------------- key conversion
def _index(model, headers, expert_params, blocks, params):
    """(parts [L][E], non-expert sources: model key -> (file, checkpoint key), the parameters
    stored fused ([E, ...] tensors, which the stock model keeps as views of the file))."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    meta = model.state_dict()
    parts = [[[] for _ in range(b.num_experts)] for b in blocks]
    sources, fused = {}, set()
    for file, (start, header) in headers.items():
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            target, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
            if target not in expert_params:
                sources[target] = (file, key)
                continue
            layer, param = expert_params[target]
            begin, end = entry["data_offsets"]
            if _DTYPES.get(entry["dtype"]) != params[param].dtype:
                raise ExpertcacheError(f"{key} is {entry['dtype']}, but other weights are "
                                       f"{str(params[param].dtype).removeprefix('torch.')}: the runtime reads checkpoints "
                                       "stored in one float type")
            E = blocks[layer].num_experts
            if pattern is None:  # fused on disk: [E, ...], expert e is the e-th equal slice
                if entry["shape"][:1] != [E]:
                    raise ExpertcacheError(f"{key} holds {entry['shape'][0] if entry['shape'] else 0} experts, config.json "
                                           f"gives {blocks[layer].path} {E}: the config and the weights disagree")
                step = (end - begin) // E
                fused.add(param)
                for e in range(E):
                    parts[layer][e].append(ExpertPart(param, file, start + begin + e * step, step, 0))
                continue
            converter = next(c for c in converters if pattern in c.source_patterns)
            _check_operations(converter, key)
            e = _expert_number(pattern, key)
            if e >= E:
                raise ExpertcacheError(f"{key} is expert {e}, but config.json gives {blocks[layer].path} {E} experts: "
                                       "the config and the weights disagree")
            position = converter.source_patterns.index(pattern)  # concatenated in this order
            parts[layer][e].append(ExpertPart(param, file, start + begin, end - begin, position * (end - begin)))
    _check_complete(parts, blocks, params)
    return parts, sources, fused


def _stock_residue(layer: list[list[ExpertPart]], param: str) -> int:
    """Where the stock model's view of a layer's fused parameter puts its expert 0, modulo LINE:
    at its offset in the file (memory maps start at page boundaries)."""
    return next(p.offset for p in layer[0] if p.param == param) % LINE


def _check_operations(converter, key: str) -> None:
    names = [type(op).__name__ for op in converter.operations]
    dims = [getattr(op, "dim", 0) for op in converter.operations]
    if names not in (["MergeModulelist"], ["MergeModulelist", "Concatenate"]) or dims[0] != 0 or dims[1:] not in ([], [1]):
        raise ExpertcacheError(f"{key} is converted with {'+'.join(names)} on load; the runtime reads experts only "
                               "from per-expert tensors merged and concatenated, or from fused ones")


def _expert_number(pattern: str, key: str) -> int:
    """The expert id in `key`: what the converter's `*` matched."""
    regex = re.escape(pattern).replace(r"\*", r"(\d+)")
    match = re.search(regex, key)
    if match is None:
        raise ExpertcacheError(f"cannot tell which expert {key} holds")
    return int(match.group(1))


def _check_complete(parts, blocks, params) -> None:
    for layer, block in enumerate(blocks):
        for e, mine in enumerate(parts[layer]):
            for name, param in params.items():
                need = param.nbytes
                got = sum(p.nbytes for p in mine if p.param == name)
                if got != need:
                    raise ExpertcacheError(f"the checkpoint holds {got} of the {need} bytes of {block.path}.experts."
                                           f"{name}[{e}]: a tensor is missing, or of another shape than config.json "
                                           "gives")


# ---------------------------------------------------------------------------- non-expert weights
def _load_non_experts(model, folder: Path, headers, sources, expert_params, device) -> int:
    """Read every parameter and persistent buffer that is not a routed expert; returns their bytes."""
    from safetensors import safe_open

    handles = {}
    total = 0
    missing = []
    try:
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name in expert_params:
                continue
            if name not in sources:
                if tensor.device.type == "meta":
                    missing.append(name)
                continue
            file, key = sources[name]
            if file not in handles:
                handles[file] = safe_open(str(folder / file), framework="pt")
            try:
                value = handles[file].get_tensor(key)
            except Exception as e:  # safetensors raises its own error types on damaged files
                raise ExpertcacheError(f"cannot read {key} from {folder / file}: {str(e).splitlines()[0]}") from None
            if tuple(value.shape) != tuple(tensor.shape):
                raise ExpertcacheError(f"{key} has shape {tuple(value.shape)}, the model expects {tuple(tensor.shape)}")
            if device.type == "cpu" and value.dtype == tensor.dtype:  # what the stock model keeps as a file view
                start, header = headers[file]
                value = _zeros_at(value.shape, value.dtype, start + header[key]["data_offsets"][0], _PAGE).copy_(value)
            else:
                value = value.to(device=device, dtype=tensor.dtype, copy=True)
            _assign(model, name, value, isinstance(tensor, nn.Parameter))
            total += value.numel() * value.element_size()
    except ExpertcacheError:
        raise
    except Exception as e:
        raise ExpertcacheError(f"cannot read the weights in {folder}: {str(e).splitlines()[0]}") from None
    if missing:
        model.tie_weights()
        still = [n for n in missing if model.get_parameter(n).device.type == "meta"] if missing else []
        if still:
            raise ExpertcacheError(f"the checkpoint has no weights for {still[0]}" +
                                   (f" and {len(still) - 1} more" if len(still) > 1 else ""))
    for module in model.modules():  # buffers made at build time (rotary inv_freq ...) follow the weights
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device and buffer.device.type != "meta":
                module._buffers[name] = buffer.to(device)
    return total


def _nbytes(shape, dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def _zeros_at(shape, dtype: torch.dtype, residue: int, modulus: int, pin: bool = False) -> torch.Tensor:
    """Zeros in host memory at an address congruent to `residue` modulo `modulus`.

    Where the stock model puts a weight: `from_pretrained` leaves tensors stored as the model
    uses them as views of the file's memory map (at their file offsets modulo the page size), and
    CPU matmuls give other last bits at other alignments (fp32 on AVX-512: a decode step's
    logits, or a prefill's expert products). A view of the map itself would fault (SIGBUS) if
    the file shrank under it, so the runtime copies into memory placed alike."""
    nbytes = _nbytes(shape, dtype)
    raw = torch.zeros(nbytes + modulus, dtype=torch.uint8, pin_memory=pin)
    shift = (_placeable(residue, dtype) - raw.data_ptr()) % modulus
    return raw[shift:shift + nbytes].view(dtype).view(shape)


def _placeable(residue: int, dtype: torch.dtype) -> int:
    """`residue`, or 0 where no tensor of `dtype` can start (aligned, as a copy would be)."""
    return 0 if residue % dtype.itemsize else residue


def expert_zeros(param: ExpertParam, rows: int, device: torch.device, pin: bool = False, residue: int = 0) -> torch.Tensor:
    """[rows, *shape] zeros for experts; on the CPU row 0 at `residue` modulo LINE (where the
    stock model keeps a layer's expert 0; the rows follow as the stock's experts do)."""
    if device.type != "cpu":
        return torch.zeros((rows, *param.shape), dtype=param.dtype, device=device, pin_memory=pin)
    return _zeros_at((rows, *param.shape), param.dtype, residue, LINE, pin)


class SlotPool:
    """[rows, *shape] expert weights on the CPU whose rows are placed one by one: `place(row,
    residue)` moves a row to `residue` modulo LINE within its own stretch of memory, where the
    stock model keeps the expert the row is about to hold. One pool serves every layer, whose
    experts lie at different offsets (shards, tensors not a multiple of LINE bytes); indexing
    answers as a tensor's first dimension does."""

    def __init__(self, param: ExpertParam, rows: int):
        self.shape, self.dtype, self.device = (rows, *param.shape), param.dtype, torch.device("cpu")
        self._row_bytes = param.nbytes
        self._stride = -(-self._row_bytes // LINE) * LINE + LINE  # room to move a row within
        self._raw = _zeros_at((rows * self._stride,), torch.uint8, 0, LINE)
        self._rows = [self._view(row, 0) for row in range(rows)]

    def _view(self, row: int, residue: int) -> torch.Tensor:
        at = row * self._stride + residue
        return self._raw[at:at + self._row_bytes].view(self.dtype).view(self.shape[1:])

    def place(self, row: int, residue: int) -> None:
        """Before a row is filled: put it at `residue` modulo LINE (its old bytes do not move)."""
        residue = _placeable(residue, self.dtype)
        if self._rows[row].data_ptr() % LINE != residue:
            self._rows[row] = self._view(row, residue)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):  # [row:row + 1], one row as [1, *shape]
            return self._rows[index.start].unsqueeze(0)
        return self._rows[index]

    def dim(self) -> int:
        return len(self.shape)


def _assign(model, name: str, value: torch.Tensor, is_param: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    if is_param:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value
