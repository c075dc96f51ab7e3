"""An accelerate device map places the model without changing the routing it records.

On a CPU-only machine "auto" puts everything on the CPU; this checks the accelerate loading
path end to end, not a multi-device split (no GPU here)."""

import numpy as np
import pytest

from expertcache import capture_corpus, load_model

pytest.importorskip("accelerate")


def test_device_map_auto_records_the_same_routing(tiny_model, text_corpus, tmp_path):
    model = tiny_model("olmoe")
    mapped_model = load_model(model, device_map="auto")
    plain = capture_corpus(model, text_corpus, tmp_path / "plain", samples=2, length=32).load()
    mapped = capture_corpus(mapped_model, text_corpus, tmp_path / "auto", samples=2, length=32).load()
    np.testing.assert_array_equal(mapped.experts, plain.experts)
    np.testing.assert_array_equal(mapped.weights, plain.weights)


def test_a_device_map_without_accelerate_is_a_one_line_error(monkeypatch):
    import importlib.util

    from expertcache.errors import ExpertcacheError
    from expertcache.trace.capture import _placement

    assert _placement("auto") == ("auto", None) and _placement("cuda:1") == (None, "cuda:1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ExpertcacheError, match=r"^device_map 'auto' needs accelerate: pip install"):
        _placement("auto")
    assert _placement("cpu") == (None, None)  # one device needs no accelerate
