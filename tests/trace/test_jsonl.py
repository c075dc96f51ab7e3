"""The JSONL routing format: every field lands where docs/trace-format.md says, and every kind of
malformed line is refused with its file and line number."""

import json
import subprocess
import sys

import numpy as np
import pytest

from expertcache import ExpertcacheError, ModelInfo, Trace
from expertcache.trace.format import DECODE, PREFILL
from expertcache.trace.jsonl import import_jsonl


def write(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_minimal_lines_are_one_decode_sequence(tmp_path):
    path = write(tmp_path / "tiny.route.jsonl", {"layers": [[2, 0], [1, 3]]}, {"layers": [[0, 1], [3, 2]]})
    trace = import_jsonl(path, 4)
    assert (trace.model.name, trace.num_sequences, trace.num_moe_layers, trace.top_k, trace.num_experts) == (
        "tiny", 1, 2, 2, 4)
    assert trace.experts.tolist() == [[[2, 0], [1, 3]], [[0, 1], [3, 2]]]  # score order kept
    assert trace.positions.tolist() == [0, 1] and trace.phase.tolist() == [DECODE] * 2
    assert trace.tokens.tolist() == [-1, -1] and not np.asarray(trace.weights).any()
    assert trace.domains == ["default"] and trace.capture == {"source": "jsonl", "file": "tiny.route.jsonl"}


def test_every_field(tmp_path):
    path = write(
        tmp_path / "chat.jsonl",
        {"seq": "a", "domain": "code", "tok": 5, "token_id": 17, "phase": "prefill",
         "layers": [[1, 0], None], "weights": [[0.75, 0.25], None]},  # layer 1 did not route this prompt token
        {"seq": "a", "domain": "code", "tok": 6, "token_id": 9, "phase": "decode",
         "layers": [[0, 2], [3, 1]], "weights": [[0.5, 0.5], [0.625, 0.375]]},
        "",  # blank lines are skipped
        {"seq": 7, "domain": "prose", "layers": [[3, 2], [2, 0]], "weights": [[1, 0], [0.5, 0.5]]},
    )
    model = ModelInfo(name="m", architecture="x", num_layers=3, moe_layers=(1, 2), num_experts=(4, 4), top_k=2)
    trace = import_jsonl(path, model=model, ids_sorted=True)
    assert trace.model == model and trace.num_sequences == 2 and trace.domains == ["code", "prose"]
    assert trace.seq_lengths.tolist() == [2, 1] and trace.seq_domain.tolist() == [0, 1]
    pad = trace.pad_id
    assert trace.experts.tolist() == [[[1, 0], [pad, pad]], [[0, 2], [3, 1]], [[3, 2], [2, 0]]]
    assert trace.weights.tolist() == [[[0.75, 0.25], [0, 0]], [[0.5, 0.5], [0.625, 0.375]], [[1, 0], [0.5, 0.5]]]
    assert trace.tokens.tolist() == [17, 9, -1]
    assert trace.positions.tolist() == [5, 6, 0]
    assert trace.phase.tolist() == [PREFILL, DECODE, DECODE]
    assert trace.capture["id_order"] == "ascending"
    trace.save(tmp_path / "t")
    np.testing.assert_array_equal(Trace.load(tmp_path / "t").experts, trace.experts)


LAYERS = {"layers": [[0, 1], [2, 3]]}


@pytest.mark.parametrize("lines, message", [
    (["{not json"], ":1: not valid JSON"),
    (["[1, 2]"], ":1: expected a JSON object, got list"),
    ([{**LAYERS, "weight": [[1, 0], [1, 0]]}], ":1: unknown field 'weight' \\(known: layers, weights,"),
    ([{"tok": 0}], ":1: no field 'layers'"),
    ([{"layers": "0 1"}], ":1: 'layers' must be a list of k expert ids per MoE layer"),
    ([LAYERS, {"layers": [[0, 1], [2, 3], [0, 1]]}], ":2: 'layers' must list 2 MoE layers, got 3"),
    ([LAYERS, {"layers": [[0, 1], [2, 3, 1]]}], ":2: layer 1 has 3 expert ids, expected k = 2"),
    ([{"layers": [[0, 1], [2, 2]]}], ":1: layer 1 names an expert twice"),
    ([{"layers": [[0, 9], [2, 3]]}], ":1: expert id 9 in layer 0 is outside 0..3"),
    ([{"layers": [[0, -1], [2, 3]]}], ":1: expert id -1 in layer 0 is outside 0..3"),
    ([{"layers": [[0, 1.5], [2, 3]]}], ":1: layer 0 must be a list of integer expert ids or null"),
    ([{"layers": [None, None]}], ":1: no layer routed this token"),
    ([{**LAYERS, "tok": 0}, {**LAYERS, "tok": 2}], ":2: tok 2 follows tok 0 \\(one line per token"),
    ([{**LAYERS, "tok": 3}, {**LAYERS, "tok": 3}], ":2: tok 3 follows tok 3"),
    ([{**LAYERS, "phase": "generate"}], ":1: phase must be \"prefill\" or \"decode\""),
    ([{**LAYERS, "phase": ["decode"]}], ":1: phase must be"),
    ([{**LAYERS, "seq": [1]}], ":1: 'seq' must be text or an integer"),
    ([{**LAYERS, "domain": 3}], ":1: 'domain' must be text"),
    ([LAYERS, {**LAYERS, "phase": "prefill"}], ":2: a prefill token after decode tokens"),
    ([{**LAYERS, "weights": [[1, 0], [1, 0]]}, LAYERS], ":2: weights given on some lines only"),
    ([{**LAYERS, "weights": [[1, 0]]}], ":1: 'weights' must match 'layers'"),
    ([{**LAYERS, "weights": [[1, "x"], [1, 0]]}], ":1: 'weights' must match 'layers'"),
    ([{"layers": [[0, 1], None], "weights": [[1, 0], [1, 0]]}], ":1: 'weights' must match 'layers'"),
    ([{**LAYERS, "seq": "a"}, {**LAYERS, "seq": "b"}, {**LAYERS, "seq": "a"}], ":3: sequence 'a' resumes after another"),
    ([{**LAYERS, "domain": "code"}, {**LAYERS, "domain": "math"}], ":2: domain 'math' differs from 'code'"),
    ([{**LAYERS, "token_id": -3}], ":1: 'token_id' must be an integer from 0 to 2\\^31 - 1, got -3"),
    ([{**LAYERS, "token_id": 99999999999}], ":1: 'token_id' must be an integer from 0 to 2\\^31 - 1, got 99999999999"),
    ([{**LAYERS, "tok": 10**23}], ":1: 'tok' must be an integer from 0 to 2\\^31 - 1"),
    ([LAYERS, "", {**LAYERS, "tok": "1"}], ":3: 'tok' must be an integer from 0"),  # line numbers count blank lines
    ([{"layers": [[0, 1, 2, 3, 0]]}], ":1: top-k 5 is larger than the number of experts 4"),
    ([{"layers": [[0, True], [2, 3]]}], ":1: layer 0 must be a list of integer expert ids or null"),  # numpy reads 1
    ([{**LAYERS, "weights": [[1, False], [1, 0]]}], ":1: 'weights' must match 'layers'"),
    ([{**LAYERS, "weights": [[-5, 1e300], [0.5, 0.5]]}], ":1: a weight is beyond float32's range \\(1e\\+300\\)"),
    ([{**LAYERS, "weights": [[1, float("nan")], [1, 0]]}], ":1: not valid JSON \\(NaN is not a JSON number"),
    (['{"layers": [[0, 1], [2, 3]], "weights": [[Infinity, 0], [1, 0]]}'], ":1: not valid JSON \\(Infinity is not"),
    ([""], ": no tokens"),
])
def test_malformed_lines_are_refused_with_their_line_number(tmp_path, lines, message):
    path = write(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(ExpertcacheError, match=f"^{path}{message}"):
        import_jsonl(path, 4)


def test_file_and_argument_mistakes(tmp_path):
    with pytest.raises(ExpertcacheError, match="missing.jsonl: no such file"):
        import_jsonl(tmp_path / "missing.jsonl", 4)
    path = write(tmp_path / "ok.jsonl", LAYERS)
    with pytest.raises(ExpertcacheError, match="one of the two"):
        import_jsonl(path)
    model = ModelInfo.synthetic(3, 4, 2)
    with pytest.raises(ExpertcacheError, match=":1: 'layers' must list 3 MoE layers, got 2"):
        import_jsonl(path, model=model)
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ExpertcacheError, match="not UTF-8 text"):
        import_jsonl(tmp_path / "binary.jsonl", 4)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], capture_output=True, text=True)


def test_import_jsonl_command(tmp_path):
    path = write(tmp_path / "r.jsonl", LAYERS, {"layers": [[1, 0], [3, 2]]})
    p = cli("import", "jsonl", path, "--num-experts", 4, "--ids-sorted", "--out", tmp_path / "t")
    assert p.returncode == 0, p.stderr
    trace = Trace.load(tmp_path / "t")
    assert trace.experts.tolist() == [[[0, 1], [2, 3]], [[1, 0], [3, 2]]] and trace.capture["id_order"] == "ascending"
    write(path, LAYERS, {"layers": [[0, 1]]})
    p = cli("import", "jsonl", path, "-E", 4, "--out", tmp_path / "u")
    assert p.returncode == 2 and p.stderr == f"error: {path}:2: 'layers' must list 2 MoE layers, got 1\n"
