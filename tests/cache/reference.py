"""A plain, obviously-correct engine (SPEC §4) in Python: the differential reference.

Priorities are recomputed from scratch at every eviction (no heaps, no lists), so this is
slow and only for small streams. Priority tuples: lower = evicted first.
"""

from __future__ import annotations

import math

NEVER = (2**63 - 1) // 4  # the stream's "never used again" batch (what the compiled oracle is given)


def reference_replay(batches, key_pool, key_cost, budgets, policy, half_life_batches=None, profile=None, cpu_below=0):
    """batches: list of lists of keys (stream order). Returns per-batch (hits, misses).

    cpu_below: a miss that fewer than this many requests of its batch use is computed where the
    weights live and never admitted."""
    uses = {}
    for b, batch in enumerate(batches):
        for k in batch:
            uses.setdefault(k, []).append(b)

    def next_use(k, b, never=math.inf):
        later = [u for u in uses[k] if u > b]
        return later[0] if later else never
    resident, used = set(), [0] * len(budgets)
    last_use, count, inserted, stamp, score = {}, {}, {}, {}, {}
    clock = [0.0] * len(budgets)
    admitted_at, uses_since = {}, {}
    gd = {}
    out = []
    t = 0
    for b, batch in enumerate(batches):
        seen, hits, misses, admit = set(), 0, 0, []
        for i, k in enumerate(batch):
            if k not in seen:
                seen.add(k)
                if k in resident:
                    hits += 1
                else:
                    misses += 1
                    if batch.count(k) >= cpu_below:
                        admit.append(k)
            last_use[k] = t
            t += 1
            if i != batch.index(k):
                continue  # a repeat inside the batch only refreshes recency
            count[k] = count.get(k, 0) + 1
            if k in resident:
                uses_since[k] += 1
            if half_life_batches is not None:
                rate = math.log(2) / half_life_batches
                score[k] = score.get(k, 0.0) * math.exp(-rate * (b - stamp.get(k, 0))) + 1
                stamp[k] = b
            gd[k] = clock[key_pool[k]] + count[k] / key_cost[k]
        for n, k in enumerate(admit):
            resident.add(k)
            inserted[k] = (b, n)
            admitted_at[k], uses_since[k] = t - 1, 1
            used[key_pool[k]] += key_cost[k]
        pool = key_pool[batch[0]] if batch else 0
        while used[pool] > budgets[pool]:
            candidates = [k for k in resident if key_pool[k] == pool and k not in seen]
            if not candidates:
                break

            def prio(k):
                if policy == "lru":
                    return (last_use[k], k)
                if policy == "fifo":
                    return (inserted[k], k)
                if policy == "lfu":
                    return (count[k], last_use[k], k)
                if policy == "lfu-decay":
                    return (math.log(score[k]) + math.log(2) / half_life_batches * stamp[k], last_use[k], k)
                if policy == "belady":
                    return (-next_use(k, b), last_use[k], k)
                if policy == "belady-size":  # largest distance x size first; never used = NEVER
                    return (-(next_use(k, b, NEVER) - b) * key_cost[k], last_use[k], k)
                if policy == "static":
                    return (profile[k], last_use[k], k)
                if policy == "gdsf":
                    return (gd[k], last_use[k], k)
                if policy == "hyperbolic":
                    return (uses_since[k] / (t - 1 - admitted_at[k] + 1), last_use[k], k)
                raise ValueError(policy)

            v = min(candidates, key=prio)
            if policy == "gdsf":
                clock[pool] = max(clock[pool], gd[v])
            resident.remove(v)
            used[pool] -= key_cost[v]
        out.append((hits, misses))
    return out
