"""The generic adapter on a custom (trust_remote_code) model transformers does not know."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from expertcache.errors import ExpertcacheError
from expertcache.trace.capture import capture_corpus

CODE = Path(__file__).parent / "remote_toymoe"


def remote_model(folder: Path, tokenizer, **config) -> str:
    folder.mkdir()
    for file in CODE.glob("*.py"):
        shutil.copy(file, folder)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "toymoe", "architectures": ["ToyMoeForCausalLM"], "vocab_size": len(tokenizer), **config,
        "auto_map": {"AutoConfig": "configuration_toymoe.ToyMoeConfig",
                     "AutoModelForCausalLM": "modeling_toymoe.ToyMoeForCausalLM"}}))
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_routers_found_by_shape_give_the_routing_they_returned(tmp_path, tokenizer, text_corpus):
    folder = remote_model(tmp_path / "toy", tokenizer)
    trace = capture_corpus(folder, text_corpus, tmp_path / "t", samples=2, length=16, trust_remote_code=True).load()
    assert trace.model.extra["family"] == "generic" and trace.model.moe_layers == (0, 1)
    assert trace.model.num_experts == (6, 6) and trace.top_k == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    seen = []
    for layer in model.layers:
        layer.mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(torch.tensor(trace.tokens.reshape(4, 16), dtype=torch.long))
        for l, layer in enumerate(model.layers):
            weights, ids = torch.softmax(seen[l] @ layer.mlp.router.weight.T, -1).topk(2, dim=-1)
            np.testing.assert_array_equal(trace.experts[:, l, :], ids.numpy())
            np.testing.assert_allclose(trace.weights[:, l, :], weights.numpy().astype(np.float16), rtol=2e-3)


def test_a_router_returning_only_scores_is_reported_not_guessed(tmp_path, tokenizer, text_corpus):
    folder = remote_model(tmp_path / "toy", tokenizer, router_returns_ids=False)
    with pytest.raises(ExpertcacheError, match="returns no expert ids"):
        capture_corpus(folder, text_corpus, tmp_path / "t", samples=1, length=16, trust_remote_code=True)


def test_without_trust_remote_code_the_unknown_architecture_is_named(tmp_path, tokenizer, text_corpus):
    folder = remote_model(tmp_path / "toy", tokenizer)
    with pytest.raises(ExpertcacheError, match="trust-remote-code"):
        capture_corpus(folder, text_corpus, tmp_path / "t", samples=1, length=16)
