"""Rebuild the bundled example traces and the published figures the tests compare against.

    PYTHONPATH=src python scripts/make_examples.py [SOURCE]    # SOURCE: ../shared/data/real-traces

SOURCE holds the original third-party files (Apache-2.0): two route_trace v1 CSVs with the
figures their authors published on them, and two JSONL traces. This writes
  src/expertcache/data/examples/NAME/   each original converted to the trace format, with its
                                        provenance in the manifest (capture.provenance, corpus)
  tests/data/bigmoe/                    the published curves and per-step device metrics, copied
                                        verbatim, and a short excerpt of one route CSV
Run it only when the originals or the trace format change; nothing reads SOURCE at run time.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

from expertcache.trace import ModelInfo
from expertcache.trace.bigmoe import import_bigmoe
from expertcache.trace.jsonl import import_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "expertcache" / "data" / "examples"
TEST_DATA = ROOT / "tests" / "data" / "bigmoe"

BIGMOE = {"source": "github.com/Helldez/BigMoeOnEdge", "license": "Apache-2.0",
          "recorded": "on a phone by an on-device offloading engine running a quantized GGUF build"}
WARP = {"source": "github.com/sqliteai/warp", "license": "Apache-2.0",
        "recorded": "by a hook on each layer's router (OLMoE: transformers; Kimi: the project's PyTorch reference)"}
BIGMOE_PROMPT = {"prompt": "Explain how a mixture-of-experts model decides which experts handle each token.",
                 "decoding": "greedy"}
WARP_PROMPT = {"prompt": "Write a C function that parses a JSON array of integers without using any external library, "
                         "then explain its memory usage and edge cases, and finally propose unit tests for it.",
               "decoding": "sampled at temperature 0.7, decode tokens only"}

# OLMoE-1B-7B-0924: hidden 2048, expert intermediate 1024, three matrices, recorded in float32
OLMOE = ModelInfo(name="OLMoE-1B-7B-0924", architecture="olmoe", num_layers=16, moe_layers=tuple(range(16)),
                  num_experts=(64,) * 16, top_k=8, expert_bytes=(3 * 2048 * 1024 * 4,) * 16, dtype="float32")
# Kimi-Linear-48B-A3B: 27 layers, the first dense; one shared expert; 3-bit weights of unknown packing
KIMI = ModelInfo(name="Kimi-Linear-48B-A3B", architecture="kimi_linear", num_layers=27, moe_layers=tuple(range(1, 27)),
                 num_experts=(256,) * 26, top_k=8, num_shared_experts=1, dtype="3-bit")


def build(source: Path) -> dict:
    """name -> converted trace, provenance attached."""
    qwen = import_bigmoe(source / "qwen.route.csv")
    gptoss = import_bigmoe(source / "gptoss.route.csv")
    # named like the other examples (the GGUF file name stays in capture.file); the engine
    # routed 6 of Qwen3's 8 experts and 2 of gpt-oss's 4
    qwen.model = replace(qwen.model, name="Qwen3-30B-A3B", extra={"native_top_k": 8})
    gptoss.model = replace(gptoss.model, name="gpt-oss-120b", extra={"native_top_k": 4})
    traces = {
        "qwen3-30b-a3b": (qwen, BIGMOE, BIGMOE_PROMPT),
        "gpt-oss-120b": (gptoss, BIGMOE, BIGMOE_PROMPT),
        "olmoe-1b-7b": (import_jsonl(source / "olmoe.route.jsonl", model=OLMOE, ids_sorted=True), WARP, WARP_PROMPT),
        "kimi-linear-48b": (import_jsonl(source / "kimi.route.jsonl", model=KIMI, ids_sorted=True), WARP, WARP_PROMPT),
    }
    for trace, provenance, corpus in traces.values():
        trace.capture = {**trace.capture, "provenance": provenance}
        trace.corpus = corpus
    return {name: trace for name, (trace, _, _) in traces.items()}


def write_excerpt(route_csv: Path, out: Path, steps: range) -> None:
    """The header and the rows of the given steps: a real file small enough to commit."""
    with open(route_csv) as f, open(out, "w") as w:
        for line in f:
            fields = line.split(",")
            if line.startswith(("#", "turn,")) or int(fields[2]) in steps:
                w.write(line)


def main(source: Path) -> None:
    for name, trace in build(source).items():
        trace.save(EXAMPLES / name, overwrite=True)
        print(f"wrote {EXAMPLES / name}: {trace!r}")
    TEST_DATA.mkdir(parents=True, exist_ok=True)
    for name in ("qwen", "gptoss"):
        for kind in ("published-curve", "metrics"):
            shutil.copyfile(source / f"{name}.{kind}.csv", TEST_DATA / f"{name}.{kind}.csv")
    write_excerpt(source / "gptoss.route.csv", TEST_DATA / "gptoss-excerpt.route.csv", range(82, 92))
    print(f"wrote {TEST_DATA}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "real-traces")
