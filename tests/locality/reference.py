"""Plain, per-request implementations of SPEC §2 and §3, written from the definitions alone.

These are the independent expectations the fast kernels are tested against: no stacks, no
incremental counts; every cache size is simulated on its own and every window is recounted.
"""

from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------- request streams
def sequences(trace):
    """Per sequence, the routing [T, L, K] with -1 where a layer did not route."""
    experts = np.asarray(trace.experts).astype(np.int64)
    experts[experts == trace.pad_id] = -1
    return [experts[trace.sequence(i)] for i in range(trace.num_sequences)]


def layer_tokens(seq, layer):
    """One layer's stream: a list of tokens, each the list of its requested experts."""
    return [[int(e) for e in row if e >= 0] for row in seq[:, layer, :]]


def model_tokens(seq, num_experts):
    """Model-level stream: (layer, expert) pairs as ids, layer by layer inside each token."""
    offset = np.concatenate([[0], np.cumsum(num_experts)])
    return [[int(offset[l] + e) for l in range(seq.shape[1]) for e in seq[t, l] if e >= 0]
            for t in range(len(seq))]


# ----------------------------------------------------------------- SPEC §2
def simulate(tokens, capacity, policy, m=None):
    """Hits and requests of one cache of `capacity` slots over one sequence (SPEC §2)."""
    flat = [(t, x) for t, reqs in enumerate(tokens) for x in reqs]
    token_end = []  # flat index one past the last request of each token
    q = 0
    for reqs in tokens:
        q += len(reqs)
        token_end.append(q)
    cache, last, count = set(), {}, {}
    requested = set()  # experts requested before the current request (flat order)
    distinct_before = []  # per request: how many distinct experts were requested before it
    first_use = []
    for t, x in flat:
        first_use.append(x not in requested)
        distinct_before.append(len(requested))
        requested.add(x)
    hits = 0
    q = 0
    for t, reqs in enumerate(tokens):
        before = set(cache)
        for i, x in enumerate(reqs):
            if first_use[q + i]:
                hits += distinct_before[q + i] < capacity
            else:
                hits += x in before
        for x in reqs:
            last[x] = q
            count[x] = count.get(x, 0) + 1
            if x not in cache:
                if len(cache) >= capacity:
                    cache.remove(min(cache, key=lambda y: _priority(policy, y, q, t, last, count, flat, token_end, m)))
                cache.add(x)
            q += 1
    return hits, len(flat)


def _priority(policy, y, q, t, last, count, flat, token_end, m):
    """Priority of cached expert y while request q (of token t) is applied; lower is evicted."""
    if policy == "lru":
        return last[y]
    if policy == "lfu":
        return (count[y], last[y])
    if policy == "belady":
        for r in range(q + 1, len(flat)):
            if flat[r][1] == y:
                return -r
        return -math.inf
    if policy == "fsf":
        window_end = token_end[min(t + m - 1, len(token_end) - 1)]
        pending = sum(1 for r in range(q + 1, window_end) if flat[r][1] == y)
        return (pending, last[y])
    raise ValueError(policy)


def hit_rates(streams, num_ids, policy, m=None):
    """Pooled hit rate for C = 1..num_ids over sequences (each starting afresh)."""
    total = sum(sum(len(r) for r in s) for s in streams)
    return np.array([sum(simulate(s, c, policy, m)[0] for s in streams) / total
                     for c in range(1, num_ids + 1)])


def trace_curves(trace, policy, m=None, domain=None):
    """Per-layer [L, E] and model-level [I] hit-rate curves of a trace, by brute force."""
    seqs = sequences(trace)
    if domain is not None:
        d = trace.domains.index(domain)
        seqs = [s for s, sd in zip(seqs, trace.seq_domain) if sd == d]
    sizes = trace.model.num_experts
    E = max(sizes)
    per_layer = np.ones((len(sizes), E))
    for l, e in enumerate(sizes):
        per_layer[l, :e] = hit_rates([layer_tokens(s, l) for s in seqs], e, policy, m)
    model = hit_rates([model_tokens(s, sizes) for s in seqs], sum(sizes), policy, m)
    return per_layer, model


# ----------------------------------------------------------------- SPEC §3
def window_counts(seq, layer, m, num_experts):
    """Activation counts c_e of every window of m tokens of one layer."""
    T = len(seq)
    out = []
    for start in range(T - m + 1):
        c = [0] * num_experts
        for t in range(start, start + m):
            for e in seq[t, layer]:
                if e >= 0:
                    c[e] += 1
        out.append(c)
    return out


def srp_value(windows, m):
    """(SRP, best tau, relative group size) of pooled windows, each a list of counts c_e."""
    activations = sum(sum(c) for c in windows)
    best = (math.nan, None, math.nan)
    for tau in range(m + 1):
        matches = sum(x for c in windows for x in c if x >= tau)
        predictions = m * sum(1 for c in windows for x in c if x >= tau)
        if predictions + activations == 0:
            continue  # F1 undefined: nothing predicted and nothing to predict
        f1 = 2 * matches / (predictions + activations)
        if not f1 <= best[0]:
            best = (f1, tau, predictions / activations if activations else math.nan)
    return best


def srp_windows(trace, m, layers=None, experts=None, domain=None, sequences_idx=None, position=None):
    """The pooled windows selected by a breakdown (counts restricted to `experts` if given)."""
    seqs = sequences(trace)
    idx = range(len(seqs)) if sequences_idx is None else sequences_idx
    out = []
    for i in idx:
        if domain is not None and trace.domains[trace.seq_domain[i]] != domain:
            continue
        for l in (range(trace.num_moe_layers) if layers is None else layers):
            E = trace.model.num_experts[l]
            for start, c in enumerate(window_counts(seqs[i], l, m, E)):
                if position is not None and start != position:
                    continue
                out.append(c if experts is None else [c[e] for e in experts])
    return out


# ----------------------------------------------------------------- speed baseline
def hit_counts_one_pass(tokens, num_ids, policy, m=None):
    """Hits at every size C = 1..num_ids in one pure-Python pass, request by request.

    The straightforward all-sizes method (a Mattson stack with the policy's priorities, as the
    study's own code does in Python): the baseline the benchmark measures speed-ups against.
    """
    flat = [x for reqs in tokens for x in reqs]
    next_use, upcoming = [0] * len(flat), {}
    for q in range(len(flat) - 1, -1, -1):
        next_use[q] = upcoming.get(flat[q], len(flat))
        upcoming[flat[q]] = q
    stack, count, last, pending = [], {}, {}, {}
    hist = [0] * (num_ids + 2)
    offsets = [0]
    for reqs in tokens:
        offsets.append(offsets[-1] + len(reqs))
    for u in range(min(m - 1, len(tokens)) if policy == "fsf" else 0):
        for x in tokens[u]:
            pending[x] = pending.get(x, 0) + 1
    q = 0
    for t, reqs in enumerate(tokens):
        if policy == "fsf" and t + m - 1 < len(tokens):
            for x in tokens[t + m - 1]:
                pending[x] = pending.get(x, 0) + 1
        seen, new = len(stack), 0
        first_in_token = set()
        for x in reqs:
            if x in last:
                hist[stack.index(x) + 1] += 1
            elif x in first_in_token:
                hist[num_ids + 1] += 1
            else:
                first_in_token.add(x)
                hist[seen + new + 1] += 1
                new += 1
        for x in reqs:
            count[x] = count.get(x, 0) + 1
            last[x] = q
            if policy == "fsf":
                pending[x] -= 1
            p = stack.index(x) if x in stack else len(stack)
            if p == len(stack):
                stack.append(x)
            carry = stack[0]
            for i in range(1, p):
                y = stack[i]
                if _key(policy, y, last, count, pending, next_use) < _key(policy, carry, last, count, pending, next_use):
                    stack[i] = carry
                    carry = y
            if p > 0:
                stack[p] = carry
            stack[0] = x
            q += 1
    hits = np.cumsum(hist[1:num_ids + 1])
    return hits, len(flat)


def _key(policy, y, last, count, pending, next_use):
    if policy == "lru":
        return last[y]
    if policy == "lfu":
        return (count[y], last[y])
    if policy == "fsf":
        return (pending.get(y, 0), last[y])
    return -next_use[last[y]]
