"""Tiny saved MoE models of every supported family, and a small two-domain text corpus."""

from __future__ import annotations

import pytest

from expertcache.trace.corpus import demo_tokenizer
from expertcache.toy.zoo import build_tiny_model


@pytest.fixture(scope="session")
def tokenizer():
    return demo_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer):
    """tiny_model(model_type) -> folder of a saved tiny model (built once per session)."""
    built = {}

    def get(model_type: str):
        if model_type not in built:
            folder = tmp_path_factory.mktemp(model_type)
            built[model_type] = str(build_tiny_model(model_type, folder, vocab_size=len(tokenizer), tokenizer=tokenizer))
        return built[model_type]

    return get


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """Two text-file sources (prose and code) long enough for a few 32-token windows."""
    root = tmp_path_factory.mktemp("corpus")
    prose = root / "prose.txt"
    prose.write_text(" ".join(
        f"The {w} of the river ran {d} past the old mill, and the miller counted {n} sacks of grain."
        for n, (w, d) in enumerate([("water", "slowly"), ("light", "gold"), ("sound", "softly"), ("cold", "deep")] * 12)))
    code = root / "code.py"
    code.write_text("\n".join(f"def f{i}(x, y={i}):\n    return [v * y for v in range(x) if v % {i + 2}]\n" for i in range(40)))
    return [str(prose), str(code)]
