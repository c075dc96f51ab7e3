"""The offloading runtime against two independent oracles: the stock transformers model (logits
bit-identical, same experts implementation, weights cloned to aligned memory) and the
simulator replaying the run's own trace (identical counters)."""

import numpy as np
import pytest
import torch
import transformers

import expertcache as ec
from expertcache.cache.policies import Belady
from expertcache.errors import ExpertcacheError
from expertcache.runtime import close, offload, stats
from expertcache.runtime.experts import DENSE
from expertcache.toy.zoo import build_tiny_model

FAMILIES = ["olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "deepseek_v2", "deepseek_v3", "glm4_moe",
            "gpt_oss", "phimoe", "granitemoe"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    made = {}

    def get(family, dtype=torch.float32):
        key = (family, dtype)
        if key not in made:
            path = root / f"{family}-{str(dtype)[6:]}"
            build_tiny_model(family, path, seed=1)
            if dtype != torch.float32:
                model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
                model.save_pretrained(path)
            made[key] = path
        return made[key]

    return get


def stock_model(path, implementation):
    return transformers.AutoModelForCausalLM.from_pretrained(path, experts_implementation=implementation).eval()


def prompt(n=14, seed=0):
    return torch.randint(1, 500, (1, n), generator=torch.Generator().manual_seed(seed))


# every family through the registry with both implementations; Llama4 computes its experts itself
CASES = [(family, implementation) for family in FAMILIES for implementation in ("grouped_mm", "eager")] + \
        [("llama4_text", None)]


@pytest.mark.parametrize("family,implementation", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_bit_identical_at_every_budget(family, implementation, dtype, checkpoints, tmp_path):
    path = checkpoints(family, dtype)
    stock = stock_model(path, implementation)
    ids = prompt()
    info = None
    with torch.no_grad():
        want = stock(ids).logits
        steps = stock.generate(ids, max_new_tokens=6, do_sample=False)
    for slots_per_layer in ("min", 3, "all"):
        model = offload(path, budget_x=1.0, prefetch="previous")  # to read the model's shape
        info = model._expertcache_runtime.ckpt.info
        close(model)
        L, k, E = info.num_moe_layers, info.top_k, max(info.num_experts)
        slots = {"min": k, 3: min(E, 3 * k), "all": E}[slots_per_layer] * L
        model = offload(path, budget_slots=slots, scope="layer", prefetch="previous" if slots_per_layer == 3 else None,
                        experts_implementation=implementation)
        assert model._expertcache_runtime.implementation == (implementation or DENSE)
        with torch.no_grad():
            got = model(ids).logits
            assert torch.equal(got, want), f"{family} {dtype} prefill at {slots} slots: {(got - want).abs().max()}"
            out = model.generate(ids, max_new_tokens=6, do_sample=False)
        assert out.tolist() == steps.tolist(), f"{family} {dtype} decode at {slots} slots"
        if slots_per_layer == "all":
            s = stats(model)
            assert s.hits + s.misses == s.lookups and s.misses <= L * E  # everything fits: only cold misses
        close(model)


CONFIGS = [  # (policy, scope, budget kwargs, prefetch)
    ("lru", "global", {"budget_slots": 6}, None),
    ("lru", "layer", {"budget_slots": 8}, "previous"),
    ("lfu", "global", {"budget_x": 1.5}, "frequency"),
    ("fifo", "layer", {"budget_slots": 12}, "stale-gate"),
    ("lfu-decay", "global", {"budget_mib": 0.03}, "previous"),
    ("gdsf", "global", {"budget_slots": 10}, None),
    ("random", "layer", {"budget_slots": 8}, "frequency"),
    ("hyperbolic", "global", {"budget_slots": 7}, "stale-gate"),
]


@pytest.mark.parametrize("family,policy,scope,budget,prefetch",
                         [("qwen3_moe", *c) for c in CONFIGS] + [("llama4_text", "lru", "global", {"budget_slots": 3},
                                                                  "previous")])
def test_counters_equal_the_replay_of_the_runs_trace(family, policy, scope, budget, prefetch, checkpoints, tmp_path):
    """Two prompts (two sequences) through one cache, prefill batches larger than the budget."""
    path = checkpoints(family)
    trace = tmp_path / "run.trace"
    model = offload(path, policy=policy, scope=scope, prefetch=prefetch, trace=trace, **budget)
    for seed in (0, 1):
        model.generate(prompt(20, seed), max_new_tokens=10, do_sample=False)
    got = stats(model).to_json()
    close(model)
    replay = ec.simulate(trace, policy, scope, prefetch=prefetch, accounting="strict", **budget).to_json()
    for key in ("lookups", "hits", "decode_lookups", "decode_hits", "bytes_read", "budget_bytes", "budget_slots"):
        assert got[key] == replay[key], key
    assert got["lookups"] > got["hits"] > 0
    if prefetch is not None:
        assert got["prefetch"]["issued"] > 0
        assert got["prefetch"] == replay["prefetch"]  # counts, bytes, precision and recall: simulate's report


@pytest.mark.parametrize("family", ["qwen3_moe", "llama4_text", "deepseek_v3"])
def test_stale_gate_scores_are_the_next_router_on_this_layers_input(family, checkpoints, tmp_path):
    """Recorded by a run: layer l's router on what layer l - 1's router read (Llama4's experts get
    other rows, [E * T, H] router-scaled; the runtime once scored those), scored as the router
    ranks experts (DeepSeek-V3: sigmoid plus the load-balancing bias, not the logits)."""
    from expertcache.trace import Trace
    from expertcache.trace.adapters import adapter_for, find_blocks

    path = checkpoints(family)
    stock = stock_model(path, "grouped_mm" if family != "llama4_text" else None)
    routers = [b.router for b in find_blocks(stock, adapter_for(stock))]
    seen = []
    hooks = [r.register_forward_pre_hook(lambda module, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
             for r in routers]
    ids = prompt(12)
    with torch.no_grad():
        stock(ids)
        want = [torch.nn.functional.linear(x, r.weight).float() for x, r in zip(seen[:-1], routers[1:])]  # [T, E] each
        if family == "deepseek_v3":
            want = [w.sigmoid() + r.e_score_correction_bias for w, r in zip(want, routers[1:])]
    for h in hooks:
        h.remove()
    model = offload(path, budget_x=2, prefetch="stale-gate", trace=tmp_path / "t")
    model.generate(ids, max_new_tokens=3, do_sample=False)
    close(model)
    stale = Trace.load(tmp_path / "t").stale_gate  # [N, L, E]: prefill rows first
    assert np.isnan(stale[:, 0]).all()
    for layer, scores in enumerate(want, start=1):
        np.testing.assert_array_equal(stale[:12, layer, :scores.shape[1]], scores.numpy().astype(np.float16))  # as stored


def test_the_checkpoints_generation_config_is_the_models(checkpoints, tmp_path):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(checkpoints("qwen3_moe"), path)
    config = transformers.GenerationConfig.from_pretrained(path)
    config.update(eos_token_id=[7, 11], do_sample=True, temperature=0.6, top_k=20)
    config.save_pretrained(path)
    stock = stock_model(path, "grouped_mm")
    model = offload(path, budget_x=2)
    try:
        assert model.generation_config.to_dict() == stock.generation_config.to_dict()  # was the config's defaults
        sampled = []
        for m in (stock, model):  # sampled with the file's settings, as the stock model does
            torch.manual_seed(0)
            sampled.append(m.generate(prompt(), max_new_tokens=8).tolist())
        assert sampled[0] == sampled[1]
    finally:
        close(model)


def test_sampling_generates_and_counts(checkpoints):
    model = offload(checkpoints("olmoe"), budget_slots=4)
    torch.manual_seed(0)
    out = model.generate(prompt(6), max_new_tokens=5, do_sample=True, temperature=0.8)
    assert out.shape == (1, 11)
    assert stats(model).decode_lookups == 5 * 2 * 2 - 2 * 2  # 4 decode forwards x 2 layers x k=2
    close(model)


def test_experts_never_materialized_and_cache_bounded(checkpoints):
    path = checkpoints("qwen3_moe")
    model = offload(path, budget_slots=4, scope="global")
    experts = [p for n, p in model.named_parameters() if ".experts." in n]
    assert experts and all(p.device.type == "meta" for p in experts)
    assert model._expertcache_runtime.implementation == "grouped_mm"  # transformers' default for the plain model
    s = stats(model)
    assert s.memory["slots"] == 4
    assert s.memory["cache_bytes"] == 4 * model._expertcache_runtime.ckpt.info.expert_bytes[0]
    close(model)


@pytest.mark.parametrize("limit,room,needed", [
    (24 * 2**20 - 4096, "25,161,728 bytes", "25,165,824 bytes"),  # both round to 24.0 MiB
    (20 * 2**20, "20.0 MiB", "24.0 MiB"),
])
def test_the_minimum_budget_error_tells_the_two_sizes_apart(limit, room, needed):
    from types import SimpleNamespace

    from expertcache.runtime.offload import _check_minimum

    budget = SimpleNamespace(unit="bytes", pools=lambda: [(0, limit, np.array([6 * 2**20]))])
    with pytest.raises(ExpertcacheError, match=rf"^the budget gives a pool {room}; one layer call needs 4 experts "
                                               rf"\({needed}\): raise the budget$"):
        _check_minimum(budget, SimpleNamespace(top_k=4))


@pytest.mark.parametrize("kwargs,message", [
    ({"budget_slots": 3}, "one layer call needs 4 experts"),
    ({"budget_slots": 8, "policy": "belady"}, r"'belady' \(it reads the future of a trace: an offline bound\); choose "
                                               "from fifo, gdsf, hyperbolic, lfu, lfu-decay, lru, random$"),
    ({"budget_slots": 8, "policy": "layer-static"}, r"'layer-static' \(it needs a frequency profile"),
    ({"budget_slots": 8, "policy": "bogus"}, r"'bogus' \(no such policy\); choose from fifo,"),
    ({"budget_slots": 8, "policy": Belady()}, "'belady' .*choose an online policy"),
    ({"budget_slots": 8, "prefetch": "oracle"}, "the runtime prefetches with"),
    ({"budget_slots": 8, "slow_tier": "tape"}, "unknown slow tier"),
    ({"budget_slots": 8, "device": "cuda"}, "cuda"),
    ({"budget_slots": 8, "experts_implementation": "batched_mm"}, "grouped_mm or eager, not 'batched_mm'"),
    ({}, "exactly one budget"),
    ({"budget_mib": 1e15}, "beyond any machine"),
    ({"budget_x": 2, "policy": None}, "policy name or a policy object"),
])
def test_bad_settings_are_one_line_errors(kwargs, message, checkpoints):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ExpertcacheError, match=message):
        offload(checkpoints("qwen3_moe"), **kwargs)


def test_a_budget_above_every_expert_allocates_a_slot_per_expert_and_no_more(checkpoints):
    path = checkpoints("qwen3_moe")
    model = offload(path, budget_slots=10**12)
    experts = model._expertcache_runtime.cache.slot_of.shape[0]
    s = stats(model)
    close(model)
    assert s.memory["slots"] == experts and s.memory["cache_bytes"] == s.memory["slow_tier_bytes"]


def test_damaged_checkpoints_are_one_line_errors(checkpoints, tmp_path):
    import shutil

    good = checkpoints("qwen3_moe")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpertcacheError, match="truncated"):
        offload(bad, budget_slots=8)
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(ExpertcacheError, match="safetensors"):
        offload(bad, budget_slots=8)
    weights.unlink()
    with pytest.raises(ExpertcacheError, match="no safetensors"):
        offload(bad, budget_slots=8)
    with pytest.raises(ExpertcacheError, match="does not exist"):
        offload(tmp_path / "nowhere", budget_slots=8)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])  # experts stored per expert, and fused
def test_a_config_that_disagrees_with_the_weights_is_a_one_line_error(family, checkpoints, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoints(family), bad)
    config = json.loads((bad / "config.json").read_text())
    fewer = {key: config[key] // 2 for key in ("num_experts", "num_local_experts") if key in config}
    (bad / "config.json").write_text(json.dumps({**config, **fewer}))
    with pytest.raises(ExpertcacheError, match="the config and the weights disagree"):  # was an IndexError
        offload(bad, budget_slots=8)
    (bad / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "model_type"}))
    with pytest.raises(ExpertcacheError, match=r"config.json: Unrecognized model"):  # was a ValueError traceback
        offload(bad, budget_slots=8)


def test_llama4_has_no_implementation_to_choose(checkpoints):
    with pytest.raises(ExpertcacheError, match="no experts implementation to choose"):
        offload(checkpoints("llama4_text"), budget_slots=8, experts_implementation="eager")


def test_a_model_without_routed_experts_is_a_one_line_error(tmp_path):
    config = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "dense")
    with pytest.raises(ExpertcacheError, match="no MoE layers found"):
        offload(tmp_path / "dense", budget_slots=8)


@pytest.mark.parametrize("refusal", ["at open", "at the first read"])
def test_where_o_direct_is_refused_buffered_reads_give_the_same_logits(refusal, checkpoints, monkeypatch):
    """O_DIRECT is refused by some file systems (tmpfs), at open or (alignment) at a read."""
    import errno
    import fcntl
    import os

    path = checkpoints("qwen3_moe", torch.bfloat16)
    stock = stock_model(path, None)
    ids = prompt()
    with torch.no_grad():
        want = stock(ids).logits
    refused = []
    if refusal == "at open":
        monkeypatch.delattr(os, "O_DIRECT")
    else:
        real_preadv = os.preadv

        def preadv(fd, buffers, offset):
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                refused.append(offset)
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_preadv(fd, buffers, offset)

        monkeypatch.setattr(os, "preadv", preadv)
    model = offload(path, budget_slots=8)
    store = model._expertcache_runtime.store
    descriptors = [*store._fds.values(), *store._direct_fds.values()]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)
    assert not store._direct_fds  # buffered from then on
    close(model)
    for fd in descriptors:  # the refused O_DIRECT descriptor is closed with the others
        with pytest.raises(OSError):
            os.fstat(fd)
    if refusal == "at the first read" and not refused:
        pytest.skip("this file system refuses O_DIRECT at open already")
    assert len(refused) <= 4  # at most one refused try per read thread


def test_a_read_that_fails_mid_run_is_a_one_line_error(checkpoints, tmp_path):
    import os
    import shutil

    path = tmp_path / "model"
    shutil.copytree(checkpoints("qwen3_moe"), path)
    model = offload(path, budget_slots=8)
    weights = path / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # the store's open file now ends early
    with pytest.raises(ExpertcacheError, match="ended .* bytes early"):
        model.generate(prompt(), max_new_tokens=4, do_sample=False)
    with pytest.raises(ExpertcacheError, match="an earlier layer call did not finish"):  # never a token from stale slots
        model.generate(prompt(), max_new_tokens=4, do_sample=False)
    close(model)


def test_ram_tier_gives_the_same_tokens_and_counters_as_disk(checkpoints):
    path = checkpoints("qwen3_moe", torch.bfloat16)
    runs = {}
    for tier in ("disk", "ram"):
        model = offload(path, budget_slots=6, prefetch="previous", slow_tier=tier)
        with torch.no_grad():
            out = model.generate(prompt(), max_new_tokens=6, do_sample=False)
        s = stats(model)
        runs[tier] = (out.tolist(), s.lookups, s.hits, s.bytes_read, s.memory["slow_tier"])
        close(model)
    assert runs["disk"][:4] == runs["ram"][:4] and runs["ram"][4] == "ram"
    with torch.no_grad():
        assert runs["disk"][0] == stock_model(path, "grouped_mm").generate(prompt(), max_new_tokens=6,
                                                                         do_sample=False).tolist()


@pytest.mark.parametrize("family,implementation", [("qwen3_moe", "grouped_mm"), ("qwen3_moe", "eager"),
                                                   ("gpt_oss", "grouped_mm"), ("llama4_text", None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_misses_computed_on_the_cpu_are_exact_and_replayed(family, implementation, dtype, checkpoints, tmp_path):
    """Misses kept at the source (its RAM copy), alone and mixed with loads and chunks: the stock
    logits and tokens, and counters the simulator reproduces with the same token threshold."""
    path = checkpoints(family, dtype)
    stock = stock_model(path, implementation)
    ids = prompt(20)
    with torch.no_grad():
        want = stock(ids).logits
        steps = stock.generate(ids, max_new_tokens=6, do_sample=False)
    for rule, below in (("always", 2**62), (2, 2), (4, 4)):
        trace = tmp_path / f"run-{rule}.trace"
        model = offload(path, budget_x=1.0, slow_tier="ram", misses_on_cpu=rule, trace=trace,
                        experts_implementation=implementation)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, want), f"{family} {dtype} {rule}: prefill"
            assert model.generate(ids, max_new_tokens=6, do_sample=False).tolist() == steps.tolist()
        got = stats(model)
        close(model)
        assert got.misses_on_cpu_below == below and got.misses_on_cpu > 0
        if rule == "always":
            assert (got.hits, got.bytes_read, got.misses_on_cpu) == (0, 0, got.lookups)
        else:
            assert got.bytes_read > 0 and got.misses_on_cpu < got.misses
        replay = ec.simulate(trace, "lru", budget_x=1.0, accounting="strict", misses_on_cpu_below=below).to_json()
        for key in ("lookups", "hits", "decode_lookups", "decode_hits", "bytes_read", "misses_on_cpu"):
            assert got.to_json()[key] == replay[key], (rule, key)


def test_the_cpu_threshold_is_where_moving_stops_losing():
    from expertcache.runtime.placement import ALWAYS, threshold

    expert_bytes, link, one, row = 10**6, 1e9, 2e-4, 1e-4  # moving takes 1 ms
    below = threshold(expert_bytes, link, one, row)
    cheaper_on_cpu = [n for n in range(1, 100) if one + (n - 1) * row < expert_bytes / link]
    assert below == 9 and cheaper_on_cpu == list(range(1, below))
    assert threshold(expert_bytes, link, 2e-3, row) == 0  # one token already slower than the move
    assert threshold(expert_bytes, link, one, 0.0) == ALWAYS


@pytest.mark.parametrize("kwargs,message", [
    ({"misses_on_cpu": "auto"}, "use --slow-tier ram"),
    ({"misses_on_cpu": "sometimes", "slow_tier": "ram"}, "unknown --misses-on-cpu 'sometimes'"),
])
def test_misses_on_cpu_settings_are_one_line_errors(kwargs, message, checkpoints):
    with pytest.raises(ExpertcacheError, match=message):
        offload(checkpoints("qwen3_moe"), budget_slots=8, **kwargs)


@pytest.mark.parametrize("prefetch", ["previous", "stale-gate"])
def test_a_prefetch_that_evicts_the_computing_calls_experts_waits_for_it(prefetch, checkpoints, monkeypatch):
    """One global pool of k x L slots: the prefetch for layer l + 1, issued before layer l computes,
    evicts experts layer l is about to read; their slots are reused only after it has computed."""
    from expertcache.runtime.cache import ExpertCache

    deferred = []
    settle = ExpertCache.settle

    def counting_settle(self):
        deferred.append(len(self._after_compute[0]))
        settle(self)

    monkeypatch.setattr(ExpertCache, "settle", counting_settle)
    path = checkpoints("qwen3_moe", torch.bfloat16)
    options = dict(max_new_tokens=10, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        want = stock_model(path, "grouped_mm").generate(prompt(), **options)
    model = offload(path, budget_x=1.0, prefetch=prefetch, policy="fifo")  # old hits go first
    with torch.no_grad():
        got = model.generate(prompt(), **options)
    close(model)
    assert sum(deferred) > 0  # the case happened
    assert got.sequences.tolist() == want.sequences.tolist()
    assert all(torch.equal(g, w) for g, w in zip(got.logits, want.logits))


@pytest.mark.parametrize("family,implementation", [("qwen3_moe", "grouped_mm"), ("gpt_oss", "grouped_mm"),
                                                   ("deepseek_v3", "grouped_mm"), ("llama4_text", None),
                                                   ("olmoe", "eager")])
def test_resident_experts_computed_while_misses_are_read_give_the_same_logits(family, implementation, checkpoints,
                                                                              monkeypatch):
    """Reads slowed down so that misses are still in flight when a call computes: its resident
    experts go first, the rest once read (not with eager, where a chunk costs the whole call)."""
    import time

    from expertcache.runtime.offload import Runtime
    from expertcache.runtime.store import ExpertStore

    pread = ExpertStore._pread

    def slow_pread(self, part, target):
        time.sleep(0.004)
        pread(self, part, target)

    split = []
    resident_first = Runtime._resident_first

    def counting(self, plan, late, layer, layer_slots):
        split.append((int((~late).sum()), int(late.sum())))
        yield from resident_first(self, plan, late, layer, layer_slots)

    monkeypatch.setattr(ExpertStore, "_pread", slow_pread)
    monkeypatch.setattr(Runtime, "_resident_first", counting)
    path = checkpoints(family, torch.bfloat16)
    options = dict(max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    stock = stock_model(path, implementation)
    model = offload(path, budget_x=4.0, prefetch="previous", experts_implementation=implementation)
    for seed in (0, 1):  # the second prompt's prefill finds some of its experts resident (Llama4: k = 1)
        with torch.no_grad():
            want = stock.generate(prompt(seed=seed), **options)
            got = model.generate(prompt(seed=seed), **options)
        assert got.sequences.tolist() == want.sequences.tolist()
        assert all(torch.equal(g, w) for g, w in zip(got.logits, want.logits))
    close(model)
    if implementation == "eager":
        assert not split
    else:
        assert split and all(ready > 0 and waiting > 0 for ready, waiting in split)


def test_lookup_order_is_a_stable_descending_sort_of_the_weights():
    """The runtime's ordering against torch's stable descending sort, ties included."""
    from expertcache.runtime.offload import _by_descending_weight

    rng = np.random.default_rng(0)
    weights = rng.choice(np.float32([0.1, 0.2, 0.3, 0.5]), size=(50, 6))  # many ties
    weights[0] = np.sort(weights[0])[::-1]  # already in order
    ids = np.argsort(rng.random((50, 6)), axis=1)
    got_ids, got_weights = _by_descending_weight(ids.tolist(), weights.tolist())
    want_weights, order = torch.sort(torch.from_numpy(weights), dim=-1, descending=True, stable=True)
    assert got_ids == np.take_along_axis(ids, order.numpy(), -1).tolist()
    assert np.array_equal(np.float32(got_weights), want_weights.numpy())
    assert got_ids[0] == ids[0].tolist()


def _position_in_group_matters(monkeypatch):
    """Matmuls whose rows depend on their place in the group, as a real CPU kernel's can (a
    group's first rows in a vector block, the rest in a tail), and a sort that keeps ties in
    reverse, as an unstable one may: then only the stock function's own order gives its bits."""
    def mm(a, b, out=None):
        r = a @ b + torch.arange(len(a), dtype=a.dtype)[:, None] / 8
        return r if out is None else out.copy_(r)

    def grouped_mm(x, w, offs):
        bounds = [0] + offs.tolist()
        return torch.cat([mm(x[s:e], w[i]) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))])

    def ties_reversed(x, *args, **kwargs):
        order = torch.from_numpy(np.lexsort((-np.arange(len(x)), x.numpy())))
        return torch.return_types.sort((x[order], order))

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", grouped_mm)
    monkeypatch.setattr(torch, "sort", ties_reversed)


@pytest.mark.parametrize("slots_per_layer", ["min", "all"])  # prefill in chunks, and whole
def test_rows_are_grouped_in_the_stock_functions_order(slots_per_layer, checkpoints, monkeypatch):
    path = checkpoints("olmoe")
    _position_in_group_matters(monkeypatch)
    stock = stock_model(path, "grouped_mm")
    ids = prompt(24)
    with torch.no_grad():
        want = stock(ids).logits
    k, E, L = stock.config.num_experts_per_tok, stock.config.num_experts, stock.config.num_hidden_layers
    model = offload(path, budget_slots=(k if slots_per_layer == "min" else E) * L, scope="layer")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)
    close(model)


def test_a_split_call_gates_every_row_where_the_stock_call_does(tmp_path, monkeypatch):
    """GPT-OSS's gate (a sigmoid over strided halves) gives an element in a vectorized loop's tail
    other last bits than in its body; with 48 intermediate features a row's tail depends on how
    many rows the tensor holds, so a call split while its misses are read must still gate the
    whole call's tensor (fp32, decode calls split by slowing the odd experts' reads)."""
    import time

    from expertcache.runtime.store import ExpertStore

    config = transformers.GptOssConfig(vocab_size=256, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                       num_experts_per_tok=2, sliding_window=8,
                                       layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(1)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    pread = ExpertStore._fetch

    def odd_ones_slow(self, layer, expert, dest):
        time.sleep(0.03 if expert % 2 else 0)
        pread(self, layer, expert, dest)

    monkeypatch.setattr(ExpertStore, "_fetch", odd_ones_slow)
    options = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                   return_dict_in_generate=True)
    ids = prompt(24) % 256
    with torch.no_grad():
        want = stock_model(tmp_path, "grouped_mm").generate(ids, **options)
        model = offload(tmp_path, budget_slots=2, prefetch="previous")
        got = model.generate(ids, **options)
    close(model)
    assert all(torch.equal(g, w) for g, w in zip(got.logits, want.logits))


@pytest.mark.parametrize("family", ["qwen3_moe", "granitemoe"])  # experts stored per expert / fused
def test_weights_lie_where_the_stock_models_lie(family, checkpoints):
    """CPU matmuls can give other last bits at other alignments (fp32 on AVX-512), so every weight
    sits at the stock model's address modulo the page (non-expert weights, views of the file's
    memory map there), and each cached expert at its stock tensor's modulo 64 bytes (stacked on
    load, or a view of a fused tensor: here its layers' experts lie at other offsets)."""
    path = checkpoints(family)
    stock = dict(stock_model(path, "grouped_mm").named_parameters())
    model = offload(path, budget_slots=64)
    try:
        for name, p in model.named_parameters():
            if p.device.type != "meta":
                assert p.data_ptr() % 4096 == stock[name].data_ptr() % 4096, name
        with torch.no_grad():
            model.generate(prompt(), max_new_tokens=3, do_sample=False)
        runtime = model._expertcache_runtime
        cache, checked = runtime.cache, 0
        for key in np.flatnonzero(cache.slot_of < cache.zero_slot):
            layer, expert = cache._layer_expert[key]
            for name, pool in cache.slots.items():
                want = stock[f"{runtime.ckpt.blocks[layer].path}.experts.{name}"][expert]
                got = pool[int(cache.slot_of[key])]
                assert got.data_ptr() % 64 == want.data_ptr() % 64 and torch.equal(got, want), (key, name)
                checked += 1
        assert checked >= 2 * len(cache.slots)
    finally:
        close(model)


def test_placed_memory_lies_at_the_residue_a_tensor_of_its_dtype_can_take():
    from expertcache.runtime.loading import _zeros_at

    for residue, want in [(8, 8), (200, 200), (4092, 4092), (6, 0), (4094, 0)]:  # fp32 cannot start at 6
        t = _zeros_at((3, 5), torch.float32, residue, 4096)
        assert t.data_ptr() % 4096 == want and t.shape == (3, 5) and not t.any()


def test_a_slot_moves_to_the_place_of_the_expert_it_holds():
    from expertcache.runtime.loading import ExpertParam, SlotPool

    pool = SlotPool(ExpertParam((3, 5), torch.float32), 4)
    assert pool.shape == (4, 3, 5) and pool[0].shape == (3, 5) and pool[2:3].shape == (1, 3, 5)
    for residue, want in [(40, 40), (8, 8), (6, 0), (60, 60)]:  # fp32 cannot start at 6
        pool.place(1, residue)
        assert pool[1].data_ptr() % 64 == want and pool[1].is_contiguous()
        pool[1].fill_(residue)
        assert not pool[0].any() and not pool[2].any()  # neighbours untouched (60 bytes of data, 64 of room)


@pytest.mark.parametrize("tier,rule", [("disk", "never"), ("ram", "always")])
def test_fused_experts_sharded_at_other_offsets_per_layer_stay_exact(tier, rule, tmp_path):
    """fp32 GraniteMoE saved in four shards: layer 0's fused experts lie at 40 and 56 bytes past a
    line, layer 1's at 0 and 40, so one placement per pool fit neither; each slot now moves to its
    expert's (and a layer's host copy lies as its fused tensor)."""
    build_tiny_model("granitemoe", tmp_path / "one", seed=1)
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "one").save_pretrained(tmp_path / "many",
                                                                                        max_shard_size="120KB")
    assert len(list((tmp_path / "many").glob("*.safetensors"))) == 4
    options = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        want = stock_model(tmp_path / "many", "grouped_mm").generate(prompt(), **options)
        model = offload(tmp_path / "many", budget_x=1.0, slow_tier=tier, misses_on_cpu=rule)
        got = model.generate(prompt(), **options)
    close(model)
    assert all(torch.equal(g, w) for g, w in zip(got.logits, want.logits))


def test_a_runs_trace_holds_the_sequence_in_progress(checkpoints, tmp_path, monkeypatch):
    """What a kill -9 leaves: the routing of every token so far (saved here after each forward),
    and at the end the whole sequence, once."""
    import sys

    recording = sys.modules["expertcache.runtime.recording"]
    monkeypatch.setattr(recording, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(recording, "PROGRESS_SHARE", float("inf"))  # saving may take any share here
    model = offload(checkpoints("olmoe"), budget_x=1.0, trace=tmp_path / "tr")
    seen = []
    model.register_forward_hook(lambda *_: seen.append(ec.Trace.load(tmp_path / "tr").seq_lengths.tolist()))
    with torch.no_grad():
        model.generate(prompt(), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    close(model)
    assert seen == [[14], [15], [16], [17]]  # the prompt, then one decode step per forward
    final = ec.Trace.load(tmp_path / "tr")
    assert final.seq_lengths.tolist() == [17] and len(list((tmp_path / "tr" / "shards").iterdir())) == 1


def test_misses_are_read_urgently_and_prefetches_not(checkpoints, monkeypatch):
    """Every fetch the engine's misses start is urgent, every prefetch is not: counted against the
    run's own counters."""
    from expertcache.runtime.store import ExpertStore

    urgent = []
    fetch = ExpertStore.fetch

    def recording_fetch(self, layer, expert, dest, is_urgent, ready=None):
        urgent.append(is_urgent)
        return fetch(self, layer, expert, dest, is_urgent, ready)

    monkeypatch.setattr(ExpertStore, "fetch", recording_fetch)
    model = offload(checkpoints("qwen3_moe"), budget_x=1.0, prefetch="previous")
    with torch.no_grad():
        model.generate(prompt(), max_new_tokens=8, do_sample=False)
    s = stats(model)
    close(model)
    assert s.prefetch.issued > 0
    assert urgent.count(False) == s.prefetch.issued
    assert urgent.count(True) == s.lookups - s.hits - s.misses_on_cpu


@pytest.mark.parametrize("where", ["waiting for a read", "computing", "prefetching for a decode step's first layer"])
def test_a_layer_call_interrupted_midway_stops_later_calls(where, checkpoints, monkeypatch):
    """Ctrl-C caught in Python after an engine step: the engine has counted it, but the slots may
    not hold what it planned (a read unfinished, chunks or prefetches not started), so later
    calls are a one-line error rather than tokens computed from unknown slots."""
    import time

    from expertcache.runtime.experts import GroupedCompute
    from expertcache.runtime.offload import Runtime
    from expertcache.runtime.store import ExpertStore

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "waiting for a read":
        fetch = ExpertStore._fetch
        monkeypatch.setattr(ExpertStore, "_fetch", lambda self, *a: (time.sleep(0.05), fetch(self, *a))[1])
        monkeypatch.setattr(ExpertStore, "hurry", interrupt)
    elif where == "computing":
        monkeypatch.setattr(GroupedCompute, "whole", interrupt)
        monkeypatch.setattr(GroupedCompute, "chunked", interrupt)
    else:
        prefetch = Runtime._prefetch
        monkeypatch.setattr(Runtime, "_prefetch", lambda self, layer, *a, **k:
                            interrupt() if layer == 0 else prefetch(self, layer, *a, **k))
    model = offload(checkpoints("qwen3_moe"), budget_x=1.0, prefetch="previous")
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        model.generate(prompt(), max_new_tokens=4, do_sample=False)
    monkeypatch.undo()
    with torch.no_grad(), pytest.raises(ExpertcacheError, match="an earlier layer call did not finish"):
        model.generate(prompt(), max_new_tokens=4, do_sample=False)
    close(model)


def test_a_model_dropped_without_close_frees_its_memory_and_threads_and_finishes_its_trace(checkpoints, tmp_path,
                                                                                         monkeypatch):
    """As a transformers model: `del model` frees it (slots, weights) once collected, its read
    threads end, and its trace holds every token, as after close() (no progress saved before)."""
    import gc
    import sys
    import weakref

    monkeypatch.setattr(sys.modules["expertcache.runtime.recording"], "PROGRESS_SECONDS", float("inf"))
    model = offload(checkpoints("qwen3_moe"), budget_x=1.0, prefetch="previous", trace=tmp_path / "tr")
    with torch.no_grad():
        model.generate(prompt(), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    threads = model._expertcache_runtime.store._reads._threads
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
    assert ec.Trace.load(tmp_path / "tr").seq_lengths.tolist() == [14 + 3 - 1]  # the last token is not run


def test_a_script_that_ends_without_close_leaves_the_whole_trace(checkpoints, tmp_path):
    """The model still alive at exit: its trace is finished then."""
    import subprocess
    import sys

    script = (f"import torch, expertcache as ec\n"
              f"import expertcache.runtime.recording as recording\n"
              f"recording.PROGRESS_SECONDS = float('inf')  # no progress saved before the end\n"
              f"model = ec.offload({str(checkpoints('olmoe'))!r}, budget_x=1.0, trace={str(tmp_path / 'tr')!r})\n"
              f"model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=5, min_new_tokens=5, do_sample=False)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    assert ec.Trace.load(tmp_path / "tr").seq_lengths.tolist() == [4 + 5 - 1]


def test_a_later_offload_to_the_same_trace_takes_it_over(checkpoints, tmp_path):
    """A notebook cell run again before the earlier model was closed: when the earlier model is
    collected, its routing must not land in the later run's trace."""
    import gc

    model = offload(checkpoints("olmoe"), budget_x=1.0, trace=tmp_path / "tr")
    with torch.no_grad():
        model.generate(prompt(), max_new_tokens=3, min_new_tokens=3, do_sample=False)  # 16 tokens, not closed
    model = offload(checkpoints("olmoe"), budget_x=1.0, trace=tmp_path / "tr")
    gc.collect()  # the earlier model goes
    with torch.no_grad():
        model.generate(prompt(5), max_new_tokens=2, min_new_tokens=2, do_sample=False)
    close(model)
    assert ec.Trace.load(tmp_path / "tr").seq_lengths.tolist() == [5 + 2 - 1]


def test_a_trace_that_cannot_be_finished_without_close_is_one_line(checkpoints, tmp_path, monkeypatch, capfd):
    """The finalizer cannot raise: its error is one line on stderr, not a traceback."""
    import gc

    from expertcache.trace.writer import TraceWriter

    model = offload(checkpoints("olmoe"), budget_x=1.0, trace=tmp_path / "tr")
    with torch.no_grad():
        model.generate(prompt(), max_new_tokens=2, do_sample=False)
    monkeypatch.setattr(TraceWriter, "flush", lambda self: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    del model
    gc.collect()
    err = capfd.readouterr().err
    assert err == f"expertcache: could not finish the trace at {tmp_path / 'tr'}: [Errno 28] No space left on device\n"
