"""The bundled real traces: what they hold (checked against lines of the original files), how
commands reach them by name, and the attribution shipped beside them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import expertcache
from expertcache import ExpertcacheError, open_trace
from expertcache.trace.examples import describe_examples, example_names, open_example
from expertcache.trace.format import DECODE, PREFILL

NAMES = ["gpt-oss-120b", "kimi-linear-48b", "olmoe-1b-7b", "qwen3-30b-a3b"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], capture_output=True, text=True)


def test_the_four_examples_are_there():
    assert example_names() == NAMES


@pytest.mark.parametrize("name, model, layers, experts, k, prompt, generated", [
    ("qwen3-30b-a3b", "Qwen3-30B-A3B", 48, 128, 6, 28, 128),  # the CSV header and its README's table
    ("gpt-oss-120b", "gpt-oss-120b", 36, 128, 2, 85, 64),
    ("olmoe-1b-7b", "OLMoE-1B-7B-0924", 16, 64, 8, 0, 299),  # lines of the JSONL files
    ("kimi-linear-48b", "Kimi-Linear-48B-A3B", 26, 256, 8, 0, 300),
])
def test_shape_of_each_example(name, model, layers, experts, k, prompt, generated):
    trace = open_example(name)
    assert (trace.model.name, trace.num_moe_layers, trace.num_experts, trace.top_k) == (model, layers, experts, k)
    assert trace.phase.tolist() == [PREFILL] * prompt + [DECODE] * generated
    assert trace.capture["provenance"]["license"] == "Apache-2.0"


def ids(trace, token, layer):
    return trace.experts[token, layer].tolist()


def test_qwen_routes_as_its_csv_rows_say():
    qwen = open_example("qwen3-30b-a3b")
    # rows "0,0,0,0,slot,expert,weight,...": prompt token 0, layer 0, in slot (score) order
    assert ids(qwen, 0, 0) == [49, 19, 58, 29, 16, 70]
    np.testing.assert_allclose(qwen.weights[0, 0], [0.221297, 0.191844, 0.190793, 0.147117, 0.136741, 0.112209],
                               rtol=1e-3)
    assert ids(qwen, 100, 20) == [16, 116, 5, 53, 64, 127]
    assert ids(qwen, 26, 47) == [qwen.pad_id] * 6  # the last layer skips all prompt tokens but the final one
    assert ids(qwen, 27, 47) == [105, 73, 20, 125, 2, 101]
    assert ids(qwen, 155, 47) == [73, 105, 20, 57, 9, 126]
    assert qwen.model.expert_bytes[0] == 3059712 and qwen.model.expert_bytes[6] == 2654208
    assert qwen.model.extra == {"native_top_k": 8}


def test_jsonl_examples_route_as_their_lines_say():
    olmoe = open_example("olmoe-1b-7b")
    assert olmoe.positions.tolist() == list(range(1, 300))  # its "tok" counts from 1
    assert ids(olmoe, 0, 0) == [6, 8, 15, 23, 31, 37, 53, 63]
    assert ids(olmoe, -1, 0) == [2, 20, 24, 40, 41, 44, 47, 55]
    assert ids(olmoe, -1, 15) == [3, 8, 12, 17, 30, 36, 58, 60]
    kimi = open_example("kimi-linear-48b")
    assert kimi.positions.tolist() == list(range(300))
    assert ids(kimi, 0, 0) == [36, 38, 85, 103, 116, 133, 138, 255]
    assert ids(kimi, 0, 25) == [2, 33, 72, 102, 126, 128, 168, 228]
    assert ids(kimi, 150, 12) == [16, 56, 69, 120, 153, 195, 230, 255]
    assert ids(kimi, -1, 25) == [48, 111, 126, 152, 160, 220, 229, 237]
    assert kimi.model.moe_layers == tuple(range(1, 27)) and kimi.model.num_shared_experts == 1
    for trace in (olmoe, kimi):  # the recorder sorted the ids and kept no weights
        assert trace.capture["id_order"] == "ascending"
        assert not np.asarray(trace.weights).any()


def test_example_names_open_wherever_a_trace_goes():
    trace = open_trace("example:olmoe-1b-7b")
    assert trace.num_tokens == 299
    assert expertcache.simulate("example:olmoe-1b-7b", "lru", budget_slots=16 * 8).lookups == 299 * 16 * 8
    with pytest.raises(ExpertcacheError, match="no example trace 'qwen'; the examples are gpt-oss-120b, kimi"):
        open_trace("example:qwen")


def test_unknown_example_on_the_command_line_is_one_line():
    p = cli("info", "example:mixtral")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"error: no example trace 'mixtral'; the examples are {', '.join(NAMES)}"


def test_examples_command_lists_them():
    listed = json.loads(cli("examples", "--json").stdout)
    assert listed == describe_examples()
    assert [row["name"] for row in listed] == NAMES
    assert listed[-1] == {"name": "qwen3-30b-a3b", "model": "Qwen3-30B-A3B", "experts": 128, "k": 6, "tokens": 156,
                          "source": "github.com/Helldez/BigMoeOnEdge", "license": "Apache-2.0"}
    text = cli("examples").stdout.splitlines()
    assert text[2].split() == ["name", "model", "experts", "k", "tokens", "source", "license"]
    assert text[3].split() == ["gpt-oss-120b", "gpt-oss-120b", "128", "2", "149", "github.com/Helldez/BigMoeOnEdge",
                               "Apache-2.0"]


def test_attribution_ships_beside_the_data():
    folder = Path(expertcache.__file__).parent / "data" / "examples"
    notice = (folder / "NOTICE").read_text()
    assert all(name in notice for name in NAMES)
    assert "Apache License" in (folder / "LICENSE-Apache-2.0.txt").read_text()
