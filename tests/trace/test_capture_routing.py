"""Captured routing equals the routing each family's rule gives, recomputed independently.

For every family a tiny saved model is captured through the public API; the test then runs a
separately loaded copy of the same folder on the same token windows, takes each MoE block's
input with a plain forward pre-hook, and applies the family's routing rule written out here
(not the adapters' code): ids in descending score order, weights compared as float16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from expertcache.trace.capture import capture_corpus
from expertcache.trace.generate import capture_generation

# model_type -> (block path of layer i, MoE layers expected from the config, shared experts)
FAMILIES = {
    "olmoe": ("model.layers.{}.mlp", [0, 1], 0),
    "mixtral": ("model.layers.{}.mlp", [0, 1], 0),
    "qwen2_moe": ("model.layers.{}.mlp", [0, 2], 1),  # mlp_only_layers=[1]
    "qwen3_moe": ("model.layers.{}.mlp", [1, 3], 0),  # decoder_sparse_step=2
    "qwen3_next": ("model.layers.{}.mlp", [0, 1, 2, 3], 1),
    "deepseek_v2": ("model.layers.{}.mlp", [1, 2], 2),  # first_k_dense_replace=1
    "deepseek_v3": ("model.layers.{}.mlp", [1, 2], 1),
    "glm4_moe": ("model.layers.{}.mlp", [1, 2], 1),
    "gpt_oss": ("model.layers.{}.mlp", [0, 1], 0),
    "phimoe": ("model.layers.{}.mlp", [0, 1], 0),
    "granitemoe": ("model.layers.{}.block_sparse_moe", [0, 1], 0),
    "llama4_text": ("model.layers.{}.feed_forward", [1, 3], 1),  # interleave_moe_layer_step=2
}


# ----------------------------------------------------------------------------- the rules
def _topk_desc(scores, k):
    values, ids = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


def softmax_topk(block, x, config, normalize):
    probs = torch.softmax((x @ block.gate.weight.T).float(), dim=-1)
    w, ids = _topk_desc(probs, config.num_experts_per_tok)
    return ids, w / w.sum(-1, keepdim=True) if normalize else w


def deepseek_v2(block, x, config):
    scores = torch.softmax(x.float() @ block.gate.weight.float().T, dim=-1)  # [T, E]
    T, E = scores.shape
    groups = scores.view(T, config.n_group, E // config.n_group).max(-1).values  # [T, G]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter(1, groups.topk(config.topk_group).indices, True)
    choice = scores.masked_fill(~keep.repeat_interleave(E // config.n_group, dim=1), 0.0)
    ids = choice.topk(config.num_experts_per_tok).indices
    w = scores.gather(1, ids) * config.routed_scaling_factor
    order = torch.sort(w, dim=-1, descending=True, stable=True).indices
    return ids.gather(1, order), w.gather(1, order)


def group_sigmoid(block, x, config):
    """DeepSeek-V3 / GLM4-MoE: the bias steers the choice, the weights are the plain scores."""
    scores = torch.sigmoid(x.float() @ block.gate.weight.float().T)  # [T, E]
    choice = scores + block.gate.e_score_correction_bias
    T, E = scores.shape
    per_group = E // config.n_group
    group_score = choice.view(T, config.n_group, per_group).topk(2, dim=-1).values.sum(-1)  # [T, G]
    keep = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, group_score.topk(config.topk_group).indices, True)
    choice = choice.masked_fill(~keep.repeat_interleave(per_group, dim=1), 0.0)
    ids = choice.topk(config.num_experts_per_tok).indices
    w = scores.gather(1, ids)
    if config.norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    w = w * config.routed_scaling_factor
    order = torch.sort(w, dim=-1, descending=True, stable=True).indices
    return ids.gather(1, order), w.gather(1, order)


def topk_then_softmax(block, x, config, bias=False):
    logits = x @ block.router.weight.T + (block.router.bias if bias else 0)
    values, ids = _topk_desc(logits, config.num_experts_per_tok)
    return ids, torch.softmax(values.float(), dim=-1)


def llama4(block, x, config):
    values, ids = _topk_desc(x @ block.router.weight.T, config.num_experts_per_tok)
    return ids, torch.sigmoid(values.float())


def phimoe_sparsemixer(block, x, config):
    """Eval-mode sparsemixer, top-2: the best logit, then the best of the rest, each weighted by a
    softmax over the experts whose logits lie within 2 * jitter of that pick (relative)."""
    s = x @ block.router.weight.T  # [T, E]
    eps = config.router_jitter_noise
    picks, weights, remaining = [], [], s
    for _ in range(2):
        top, pick = remaining.max(dim=-1, keepdim=True)
        far = (top - s) / s.abs().clamp(min=top) > 2 * eps
        gates = torch.softmax(remaining.masked_fill(far, float("-inf")), dim=-1)
        picks.append(pick), weights.append(gates.gather(1, pick))
        remaining = remaining.scatter(1, pick, float("-inf"))
    return torch.cat(picks, 1), torch.cat(weights, 1)


RULES = {
    "olmoe": lambda b, x, c: softmax_topk(b, x, c, c.norm_topk_prob),
    "mixtral": lambda b, x, c: softmax_topk(b, x, c, True),
    "qwen2_moe": lambda b, x, c: softmax_topk(b, x, c, c.norm_topk_prob),
    "qwen3_moe": lambda b, x, c: softmax_topk(b, x, c, c.norm_topk_prob),
    "qwen3_next": lambda b, x, c: softmax_topk(b, x, c, c.norm_topk_prob),
    "deepseek_v2": deepseek_v2,
    "deepseek_v3": group_sigmoid,
    "glm4_moe": group_sigmoid,
    "gpt_oss": lambda b, x, c: topk_then_softmax(b, x, c, bias=True),
    "phimoe": phimoe_sparsemixer,
    "granitemoe": topk_then_softmax,
    "llama4_text": llama4,
}


# ----------------------------------------------------------------------------- helpers
def block_inputs(model, paths):
    """Register pre-hooks that collect each block's input hidden states [T, H] per call."""
    seen = {p: [] for p in paths}
    handles = [model.get_submodule(p).register_forward_pre_hook(
        lambda m, args, p=p: seen[p].append(args[0].reshape(-1, args[0].shape[-1]).detach())) for p in paths]
    return seen, handles


def reference(model_type, folder, tokens):
    """Routing of `tokens` [S, T] by the rule, from an independently loaded model: [S*T, L, K]."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    template, layers, _ = FAMILIES[model_type]
    paths = [template.format(i) for i in layers]
    seen, handles = block_inputs(model, paths)
    with torch.no_grad():
        model(torch.tensor(tokens, dtype=torch.long))
    for h in handles:
        h.remove()
    with torch.no_grad():
        routed = [RULES[model_type](model.get_submodule(p), seen[p][0], model.config) for p in paths]
    return (torch.stack([r[0] for r in routed], 1).numpy(), torch.stack([r[1] for r in routed], 1).float().numpy(),
            model, paths, seen)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_captured_routing_equals_the_family_rule(model_type, tiny_model, text_corpus, tmp_path):
    folder = tiny_model(model_type)
    result = capture_corpus(folder, text_corpus, tmp_path / "t", samples=2, length=32)
    trace = result.load()
    template, layers, shared = FAMILIES[model_type]
    assert trace.model.moe_layers == tuple(layers)
    assert trace.model.num_shared_experts == shared
    assert trace.num_sequences == 4 and (trace.phase == 0).all()
    tokens = trace.tokens.reshape(4, 32)
    ids, weights, *_ = reference(model_type, folder, tokens)
    np.testing.assert_array_equal(trace.experts, ids)
    np.testing.assert_allclose(trace.weights.astype(np.float32), weights.astype(np.float16), rtol=2e-3, atol=1e-4)


def test_group_limited_routing_is_not_plain_topk(tiny_model, text_corpus, tmp_path):
    """The DeepSeek-V3 fixture exercises the bias and the group limit (else the test above proves little)."""
    folder = tiny_model("deepseek_v3")
    trace = capture_corpus(folder, text_corpus, tmp_path / "t", samples=2, length=32).load()
    _, _, model, paths, seen = reference("deepseek_v3", folder, trace.tokens.reshape(4, 32))
    block = model.get_submodule(paths[0])
    with torch.no_grad():
        plain = torch.sigmoid(seen[paths[0]][0] @ block.gate.weight.T).topk(4).indices.sort(-1).values.numpy()
    captured = np.sort(trace.experts[:, 0, :].astype(np.int64), axis=-1)
    assert (captured != plain).any(axis=-1).mean() > 0.2


def test_switch_stacks_are_separate_traces_and_capacity_drops_are_not_routed(tiny_model, text_corpus, tmp_path):
    folder = tiny_model("switch_transformers")
    result = capture_corpus(folder, text_corpus, tmp_path / "t", samples=2, length=32)
    assert set(result.traces) == {"encoder", "decoder"}
    assert (tmp_path / "t" / "stacks.json").is_file()
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    capacity = model.config.expert_capacity
    for stack, template in (("encoder", "encoder.block.{}.layer.1.mlp"), ("decoder", "decoder.block.{}.layer.2.mlp")):
        trace = result.load(stack)
        assert trace.model.stack == stack and trace.model.moe_layers == (1, 3) and trace.top_k == 1
        paths = [template.format(i) for i in (1, 3)]
        seen, handles = block_inputs(model, paths)
        with torch.no_grad():
            enc = np.array(result.load("encoder").tokens).reshape(4, 32)  # a writable copy of the memory map
            dec = np.array(result.load("decoder").tokens).reshape(4, 32)
            model(input_ids=torch.as_tensor(enc, dtype=torch.long), decoder_input_ids=torch.as_tensor(dec, dtype=torch.long))
        for h in handles:
            h.remove()
        for l, p in enumerate(paths):
            router = model.get_submodule(p).router.classifier
            with torch.no_grad():
                probs = torch.softmax(seen[p][0] @ router.weight.T + (router.bias if router.bias is not None else 0), -1)
            best, top = probs.max(-1)  # [S*T]
            top = top.view(4, 32)
            # per sequence, the (capacity+1)-th and later token sent to an expert is dropped
            rank = torch.stack([(top[:, :t + 1] == top[:, t:t + 1]).sum(1) for t in range(32)], 1)  # [S, T]
            expected = torch.where(rank <= capacity, top, trace.pad_id).reshape(-1).numpy()
            np.testing.assert_array_equal(trace.experts[:, l, 0], expected)
            routed = expected != trace.pad_id
            np.testing.assert_allclose(trace.weights[routed, l, 0], best.numpy()[routed].astype(np.float16), rtol=2e-3)
        assert stack == "decoder" or (trace.experts == trace.pad_id).any(), "capacity never hit: fixture too small"


@pytest.mark.parametrize("model_type,implementation", [
    ("olmoe", "grouped_mm"), ("olmoe", "batched_mm"), ("olmoe", "eager"), ("gpt_oss", "eager"), ("llama4_text", None)])
def test_capture_leaves_the_model_output_unchanged(model_type, implementation, tiny_model, tokenizer):
    from expertcache.trace.capture import load_model

    loaded = load_model(tiny_model(model_type), need_tokenizer=False)
    if implementation:
        loaded.model.set_experts_implementation(implementation)
    ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = loaded.model(ids).logits
        with loaded.recorder(logits=True, stale_gate=True) as recorder:
            captured = loaded.model(ids).logits
            assert recorder.take()["experts"].shape[0] == 48
        after = loaded.model(ids).logits
    assert torch.equal(plain, captured) and torch.equal(plain, after)
    assert loaded.model.config._experts_implementation == (implementation or "eager")


@pytest.mark.parametrize("model_type", ["olmoe", "deepseek_v3"])
def test_logits_and_stale_gate_are_the_routers_applied_to_this_and_the_previous_moe_input(
        model_type, tiny_model, text_corpus, tmp_path):
    folder = tiny_model(model_type)
    trace = capture_corpus(folder, text_corpus, tmp_path / "t", samples=2, length=32, logits=True, stale_gate=True).load()
    _, _, model, paths, seen = reference(model_type, folder, trace.tokens.reshape(4, 32))
    x = [seen[p][0].float() for p in paths]
    W = [model.get_submodule(p).gate.weight.detach().float() for p in paths]
    for l in range(len(paths)):
        np.testing.assert_allclose(trace.logits[:, l, :].astype(np.float32), (x[l] @ W[l].T).numpy(), rtol=5e-3, atol=2e-3)
    assert np.isnan(trace.stale_gate[:, 0, :]).all()
    stale = x[0] @ W[1].T
    if model_type == "deepseek_v3":  # scored as the router picks: sigmoid plus its load-balancing bias
        stale = stale.sigmoid() + model.get_submodule(paths[1]).gate.e_score_correction_bias.float()
    np.testing.assert_allclose(trace.stale_gate[:, 1, :].astype(np.float32), stale.numpy(), rtol=5e-3, atol=2e-3)


@pytest.mark.parametrize("model_type", ["olmoe", "deepseek_v3"])
def test_generation_marks_prefill_and_decode_and_records_each_step(model_type, tiny_model, tmp_path):
    folder = tiny_model(model_type)
    result = capture_generation(folder, "def add(a, b):", tmp_path / "g", new_tokens=6)
    trace = result.load()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = tok("def add(a, b):", return_tensors="pt").input_ids
    P = prompt.shape[1]
    template, layers, _ = FAMILIES[model_type]
    paths = [template.format(i) for i in layers]
    seen, handles = block_inputs(model, paths)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=7, min_new_tokens=7, do_sample=False, pad_token_id=0)[0]
    for h in handles:
        h.remove()
    assert trace.phase.tolist() == [0] * P + [1] * 6
    np.testing.assert_array_equal(trace.tokens, out[:P + 6].numpy())
    assert [len(v) for v in seen.values()] == [7] * len(paths)  # one prefill pass, then one per step
    for l, p in enumerate(paths):
        with torch.no_grad():
            ids, weights = RULES[model_type](model.get_submodule(p), torch.cat(seen[p]), model.config)
        np.testing.assert_array_equal(trace.experts[:, l, :], ids.numpy())
