"""Budgets: slots, bytes (MiB = 2^20 bytes) or a multiple of the active experts;
scope global (one pool) or per layer (equal shares floor(budget / MoE layers), or shares
proportional to each layer's expert bytes).

A global cache smaller than one token cycle (every MoE layer's k experts) evicts each layer's
experts before the next token comes back to them: LRU then collapses to no hits at all, which
`budget_warnings` says.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import ExpertcacheError
from ..units import size_text

__all__ = ["Budget", "check_budget_value", "resolve_budget", "SCOPES", "MIB", "cycle_size", "budget_warnings"]

MIB = 1 << 20
MAX_BUDGET = 1 << 62  # budgets, in bytes or experts, stay far from int64 overflow
SCOPES = ("global", "layer")
SHARES = ("equal", "bytes")


@dataclass(frozen=True)
class Budget:
    key_pool: np.ndarray  # [K] pool of each key
    key_cost: np.ndarray  # [K] budget units one key takes (bytes, or 1 for slots)
    pool_budget: np.ndarray  # [P] units per pool
    unit: str  # "bytes" or "slots"
    total: int  # the whole budget in its unit

    @property
    def budget_bytes(self) -> int | None:
        return self.total if self.unit == "bytes" else None

    @property
    def budget_slots(self) -> int | None:
        return self.total if self.unit == "slots" else None

    def pools(self):
        """(pool, its budget, [n] the costs of its keys) for every pool that has keys."""
        for pool, limit in enumerate(self.pool_budget):
            cost = self.key_cost[self.key_pool == pool]
            if len(cost):
                yield pool, int(limit), cost


def layer_expert_bytes(model) -> np.ndarray | None:
    """[L] bytes of one expert per MoE layer, or None when the trace does not say."""
    return np.asarray(model.expert_bytes, np.int64) if model.expert_bytes else None


def _layer_cost(model, unit: str) -> np.ndarray:
    """[L] budget units one expert of each MoE layer takes."""
    return layer_expert_bytes(model) if unit == "bytes" else np.ones(model.num_moe_layers, np.int64)


def check_budget_value(value, label: str) -> None:
    """A budget is a positive, finite number (NaN is neither)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ExpertcacheError(f"budget must be a number, got {value!r}")
    if not 0 < value < math.inf:
        raise ExpertcacheError(f"budget must be positive and finite, got {value} {label}")


def resolve_budget(model, key_layer: np.ndarray, scope: str = "global", *, budget_mib=None, budget_slots=None,
                   budget_x=None, shares: str = "equal", reserve_slots: int = 0) -> Budget:
    """Pools and per-pool limits for one configuration. `reserve_slots` are taken off the main
    budget for a prefetch buffer (each reserved slot costs one of the largest experts)."""
    given = [(v, u) for v, u in ((budget_mib, "MiB"), (budget_slots, "slots"), (budget_x, "x")) if v is not None]
    if len(given) != 1:
        raise ExpertcacheError("give exactly one budget: budget_mib, budget_slots or budget_x "
                               "(--budget-mib, --budget-slots or --budget-x)")
    value, label = given[0]
    check_budget_value(value, label)
    if budget_slots is not None and value != int(value):
        raise ExpertcacheError(f"budget_slots counts whole experts, got {value}")
    if scope not in SCOPES:
        raise ExpertcacheError(f"unknown scope {scope!r}; choose global or layer")
    if shares not in SHARES:
        raise ExpertcacheError(f"unknown per-layer shares {shares!r}; choose equal or bytes")
    sizes = layer_expert_bytes(model)
    L, k = model.num_moe_layers, model.top_k
    if budget_mib is not None:
        if sizes is None:
            raise ExpertcacheError("this trace records no expert sizes; give the budget in slots or as a multiple")
        unit, total = "bytes", int(round(budget_mib * MIB))
    elif budget_slots is not None:
        unit, total = "slots", int(budget_slots)
    else:
        # one "x" = the experts active in one token cycle: k per MoE layer
        if sizes is None:
            unit, total = "slots", int(budget_x * L * k)
        else:
            unit, total = "bytes", int(budget_x * k * int(sizes.sum()))
    if total < 1:
        raise ExpertcacheError(f"a budget of {value} {label} holds nothing ({total} {unit})")
    if total >= MAX_BUDGET:
        raise ExpertcacheError(f"budget of {value} {label} is beyond any machine (2^62 {unit} or more)")
    cost_per_layer = _layer_cost(model, unit)
    if reserve_slots:
        total -= int(reserve_slots) * int(cost_per_layer.max())
        if total <= 0:
            raise ExpertcacheError(f"{reserve_slots} reserved prefetch slots take the whole budget")
    key_cost = cost_per_layer[key_layer].astype(np.int64)
    if scope == "global":
        return Budget(np.zeros(len(key_layer), np.int64), key_cost, np.array([total], np.int64), unit, total)
    if shares == "equal" or unit == "slots":
        pool_budget = np.full(L, total // L, np.int64)
    else:
        pool_budget = (total * sizes // sizes.sum()).astype(np.int64)
    return Budget(key_layer.astype(np.int64), key_cost, pool_budget, unit, total)


def cycle_size(model) -> tuple[int, int | None]:
    """(slots, bytes) one token cycle needs: k experts in every MoE layer (bytes None if unknown)."""
    sizes = layer_expert_bytes(model)
    slots = model.num_moe_layers * model.top_k
    return slots, None if sizes is None else int(sizes.sum() * model.top_k)


def budget_warnings(model, scope: str, budget: Budget) -> list[str]:
    if scope != "global":
        warnings = []
        unused = budget.total - int(budget.pool_budget.sum())
        if budget.unit == "slots" and unused:
            warnings.append(f"{budget.total} slots over {model.num_moe_layers} layers: "
                            f"{budget.total // model.num_moe_layers} per layer, {unused} left unused")
        if (budget.pool_budget < model.top_k * _layer_cost(model, budget.unit)).any():
            warnings.append(f"a per-layer share is smaller than the {model.top_k} experts one layer call needs: "
                            "each layer keeps only its last call's experts")
        return warnings
    smallest = int(budget.key_cost.min())
    if budget.total < smallest:
        one = "1 slot" if budget.unit == "slots" else size_text(smallest)
        return [f"the budget holds no expert (the smallest takes {one}): published accounting keeps only the last "
                "batch's experts, over budget, until the next batch (strict accounting refuses such a budget)"]
    slots, nbytes = cycle_size(model)
    need = nbytes if budget.unit == "bytes" else slots
    if budget.total < need:
        unit = size_text(need) if budget.unit == "bytes" else f"{need} slots"
        return [f"the budget cannot hold one token cycle ({model.num_moe_layers} layers x k={model.top_k} = {unit}): "
                "a global LRU cache then evicts most experts before the next token can reuse them"]
    return []
