"""The tiny models of the zoo keep their family's routing features switched on."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from expertcache.toy.zoo import build_tiny_model


@pytest.mark.parametrize("family", ["deepseek_v3", "glm4_moe"])
def test_each_moe_layer_has_its_own_score_correction_bias(tmp_path, family):
    # A bias shared by every layer would let a stale gate look right for the wrong reason.
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(family, tmp_path / family, seed=3))
    biases = [b for name, b in model.named_buffers() if name.endswith("e_score_correction_bias")]
    assert len(biases) >= 2
    assert all(b.abs().sum() > 0 for b in biases)
    assert not any(torch.equal(a, b) for i, a in enumerate(biases) for b in biases[i + 1:])
