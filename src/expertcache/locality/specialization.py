"""Vocabulary and domain specialization of experts.

Vocabulary, per layer and token kind: take every position whose token (of that kind) is
known and that the layer routed; for a token id v seen at least `min_count` (20) times there,
share(v) = max_e n(v, e) / n(v), where n(v, e) counts v's positions routed to expert e and n(v)
counts v's positions. v's dominant expert is that argmax (ties: lowest id); an expert's
specialization is the mean share over the tokens it dominates. Kinds:
- input: the token at the position itself;
- next: the token at the following position of the same sequence;
- predicted: the token the model produced at the position = the next token, but only where
  that next token is a decode-phase token (generated from this position); prefill positions
  are teacher-forced, their prediction was not recorded, and they are left out.

Domain, per layer and expert: rate(e, d) = activations of e in domain d / routed tokens of
domain d (the share of d's tokens sent to e); q(e, d) = rate(e, d) / sum_d rate(e, d);
specialization(e) = 1 - H(q_e) / log D_l (0 = the same rate in every domain, 1 = used in one
domain only), D_l counting the domains with routed tokens at that layer (a domain the layer
never routed says nothing); NaN with fewer than two such domains, for an unused expert, or for
an expert id beyond the layer's own experts.

Shape key: N tokens, L MoE layers, K top-k, E experts, D domains.
"""

from __future__ import annotations

import math

import numpy as np

from ..trace import DECODE, Trace

__all__ = ["KINDS", "MIN_COUNT", "NO_FREQUENT_TOKEN", "domain_specialization", "missing_specialization",
           "vocabulary_specialization"]

KINDS = ("input", "predicted", "next")
MIN_COUNT = 20
NO_FREQUENT_TOKEN = f"no token id occurs {MIN_COUNT} times, the fewest a share is computed from"


def missing_specialization(trace: Trace) -> dict[str, str]:
    """Why the trace cannot show vocabulary ("vocabulary") or domain ("domains") specialization;
    empty when it can show both. Checked before computing, so nothing is computed for nothing."""
    missing = {}
    if not (np.asarray(trace.tokens) >= 0).any():
        missing["vocabulary"] = "the trace records no token ids (its recorder kept only the routing)"
    if len(np.unique(trace.seq_domain)) < 2:
        name = trace.domains[int(trace.seq_domain[0])]
        missing["domains"] = f"the trace holds one domain ({name}), so there is nothing to compare"
    return missing


def _token_kinds(trace: Trace) -> dict[str, np.ndarray]:
    """[N] token id of each kind per position, -1 where unknown or not applicable."""
    tokens = np.asarray(trace.tokens, np.int64)
    nxt = np.full_like(tokens, -1)
    nxt[:-1] = tokens[1:]
    last = trace.seq_offsets[1:] - 1  # a sequence's last position has no next token
    nxt[last] = -1
    generated = np.zeros(len(tokens), bool)
    generated[:-1] = np.asarray(trace.phase)[1:] == DECODE
    return {"input": tokens, "predicted": np.where(generated, nxt, -1), "next": nxt}


def vocabulary_specialization(trace: Trace, min_count: int = MIN_COUNT, kinds=KINDS) -> list[dict]:
    """Rows (kind, layer, expert, tokens, share): tokens an expert dominates and their mean
    share; expert -1 summarizes the layer (all frequent tokens). `kinds`: a subset of KINDS."""
    rows = []
    kinds = {kind: tokens for kind, tokens in _token_kinds(trace).items() if kind in kinds}
    for l in range(trace.num_moe_layers):
        E = trace.model.num_experts[l]
        experts = trace.layer_experts(l)  # [N, K]
        routed = experts != trace.pad_id
        for kind, tokens in kinds.items():
            valid = (tokens >= 0) & routed.any(axis=1)  # [N]
            vocab, dense = np.unique(tokens[valid], return_inverse=True)
            occurrences = np.bincount(dense, minlength=len(vocab))  # [V]
            hit = routed[valid]  # [n, K]
            pair = dense[:, None] * E + experts[valid].astype(np.int64)  # [n, K]
            codes, counts = np.unique(pair[hit], return_counts=True)
            v, e = codes // E, codes % E
            order = np.lexsort((e, -counts, v))  # per token: most frequent expert first, lowest id on ties
            leads = np.ones(len(order), bool)
            leads[1:] = v[order][1:] != v[order][:-1]
            first = order[leads]  # one row per token id: its dominant expert
            top_v, top_e, top_n = v[first], e[first], counts[first]
            frequent = occurrences[top_v] >= min_count
            share = top_n[frequent] / occurrences[top_v[frequent]]
            dominant = top_e[frequent]
            for expert in range(E):
                mine = share[dominant == expert]
                rows.append({"kind": kind, "layer": l, "expert": expert, "tokens": int(len(mine)),
                             "share": float(mine.mean()) if len(mine) else math.nan})
            rows.append({"kind": kind, "layer": l, "expert": -1, "tokens": int(len(share)),
                         "share": float(share.mean()) if len(share) else math.nan})
    return rows


def domain_specialization(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """(rate [L, E, D], specialization [L, E]) as defined above."""
    L, E, D = trace.num_moe_layers, trace.num_experts, len(trace.domains)
    token_domain = trace.token_domain.astype(np.int64)  # [N]
    rate = np.full((L, E, D), np.nan)
    seen = np.zeros(L, np.int64)  # [L] domains with routed tokens at the layer
    for l, own in enumerate(trace.model.num_experts):
        experts = trace.layer_experts(l)  # [N, K]
        routed = experts != trace.pad_id
        tokens = np.bincount(token_domain[routed.any(axis=1)], minlength=D)  # [D]
        dom = np.broadcast_to(token_domain[:, None], experts.shape)[routed]
        counts = np.bincount(experts[routed].astype(np.int64) * D + dom, minlength=own * D).reshape(own, D)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate[l, :own] = np.where(tokens > 0, counts / tokens, np.nan)  # ids beyond the layer's own stay NaN
        seen[l] = (tokens > 0).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        q = rate / np.nansum(rate, axis=2, keepdims=True)
        plogp = np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0.0)
        log_d = np.log(np.where(seen > 1, seen, np.nan))[:, None]  # [L, 1]
        spec = np.where(np.nansum(rate, axis=2) > 0, 1 + np.nansum(plogp, axis=2) / log_d, np.nan)
    return rate, spec
