"""What a trace needs to know about the model that produced it.

Shape key: L MoE layers (dense layers are not counted), E experts, K routed experts per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..checks import is_whole
from ..errors import ExpertcacheError

__all__ = ["ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """Model description stored in every trace manifest.

    `moe_layers` are indices into the model's full layer stack; every per-layer array of a
    trace has one entry per MoE layer, in this order. Shared (always-on) experts are not
    routed and are only counted here.
    """

    name: str
    architecture: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: tuple[int, ...]  # per MoE layer
    top_k: int
    num_shared_experts: int = 0
    expert_bytes: tuple[int, ...] = ()  # bytes of one routed expert, per MoE layer
    dense_bytes: tuple[int, ...] = ()  # bytes of a layer's non-expert part, per MoE layer (optional)
    dtype: str = "unknown"
    stack: str = "decoder"  # "encoder" / "decoder" for seq2seq models
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not all(isinstance(getattr(self, name), str) for name in ("name", "architecture", "dtype")) \
                or self.stack not in ("decoder", "encoder") or not isinstance(self.extra, dict):
            raise ExpertcacheError("name, architecture and dtype must be strings, stack decoder or encoder, extra a dict")
        for name in ("num_layers", "top_k", "num_shared_experts"):
            value = getattr(self, name)
            if not is_whole(value):
                raise ExpertcacheError(f"{name} must be a whole number, got {value!r}")
        for name in ("moe_layers", "num_experts", "expert_bytes", "dense_bytes"):
            values = tuple(getattr(self, name))
            wrong = next((v for v in values if not is_whole(v)), None)
            if wrong is not None:  # 8.5 experts were read as 8, "8" as 8
                raise ExpertcacheError(f"{name} must hold whole numbers, got {wrong!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        if self.num_layers < 1 or self.num_shared_experts < 0:
            raise ExpertcacheError(f"num_layers must be >= 1 and num_shared_experts >= 0, got {self.num_layers} "
                                   f"and {self.num_shared_experts}")
        n = len(self.moe_layers)
        if n == 0:
            raise ExpertcacheError(f"model {self.name!r} has no MoE layers")
        if len(self.num_experts) != n:
            raise ExpertcacheError(
                f"num_experts has {len(self.num_experts)} entries for {n} MoE layers"
            )
        if min(self.num_experts) < 1:
            raise ExpertcacheError("every MoE layer needs at least one expert")
        if self.top_k < 1:
            raise ExpertcacheError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_k > min(self.num_experts):
            raise ExpertcacheError(
                f"top-k {self.top_k} is larger than the number of experts {min(self.num_experts)}"
            )
        for name in ("expert_bytes", "dense_bytes"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ExpertcacheError(f"{name} needs one entry per MoE layer ({n})")
            if any(v < 0 for v in getattr(self, name)):
                raise ExpertcacheError(f"{name} must not be negative, got {min(getattr(self, name))}")
        if any(layer < 0 or layer >= self.num_layers for layer in self.moe_layers):
            raise ExpertcacheError(f"MoE layer indices {self.moe_layers} outside 0..{self.num_layers - 1}")
        if any(a >= b for a, b in zip(self.moe_layers, self.moe_layers[1:])):
            raise ExpertcacheError(f"MoE layer indices {self.moe_layers} must rise, each layer once")

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def max_experts(self) -> int:
        return max(self.num_experts)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelInfo":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ExpertcacheError(f"unknown model fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def synthetic(cls, num_moe_layers: int, num_experts: int, top_k: int, name: str = "synthetic") -> "ModelInfo":
        """Description for arrays that came without a model (all layers MoE, E experts each)."""
        return cls(
            name=name,
            architecture="unknown",
            num_layers=num_moe_layers,
            moe_layers=tuple(range(num_moe_layers)),
            num_experts=(num_experts,) * num_moe_layers,
            top_k=top_k,
        )
