"""Import/export contracts: .npy arrays and the route_trace v1 CSV (a real excerpt, tests/data/bigmoe)."""

import csv
from pathlib import Path

import numpy as np
import pytest

from expertcache import ExpertcacheError, Trace
from expertcache.trace.arrays_io import export_arrays, import_arrays
from expertcache.trace.bigmoe import import_bigmoe
from expertcache.trace.examples import open_example

EXCERPT = Path(__file__).resolve().parents[1] / "data" / "bigmoe" / "gptoss-excerpt.route.csv"


@pytest.mark.parametrize("shape, experts", [((3, 17, 4, 2), 8), ((1, 2, 1, 1), 1), ((2, 5, 3, 8), 300)])
def test_arrays_round_trip(rng, distinct_ids, tmp_path, shape, experts):
    ids = distinct_ids(shape, experts)
    ids[0, 0, 0, :] = -1  # a token the layer did not route
    weights = rng.random(shape).astype(np.float16)
    tokens = rng.integers(0, 50_000, shape[:2])
    for name, array in (("e", ids), ("w", weights), ("t", tokens)):
        np.save(tmp_path / f"{name}.npy", array)
    trace = import_arrays(tmp_path / "e.npy", experts, weights_path=tmp_path / "w.npy", tokens_path=tmp_path / "t.npy")
    trace.save(tmp_path / "trace")
    export_arrays(Trace.load(tmp_path / "trace"), tmp_path / "e2.npy", weights_path=tmp_path / "w2.npy",
                  tokens_path=tmp_path / "t2.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "e2.npy"), ids)
    np.testing.assert_array_equal(np.load(tmp_path / "w2.npy"), weights)
    np.testing.assert_array_equal(np.load(tmp_path / "t2.npy"), tokens)


def test_export_needs_fixed_length(rng, tmp_path):
    trace = Trace.from_arrays([rng.integers(0, 4, (t, 1, 1)) for t in (2, 3)], 4)
    with pytest.raises(ExpertcacheError, match="fixed length"):
        export_arrays(trace, tmp_path / "e.npy")


def test_export_refuses_two_arrays_to_one_file(rng, tmp_path):
    trace = Trace.from_arrays([rng.integers(0, 4, (3, 1, 1))], 4)
    with pytest.raises(ExpertcacheError, match="same file"):
        export_arrays(trace, tmp_path / "y.npy", tokens_path=tmp_path / "." / "y.npy")
    assert not (tmp_path / "y.npy").exists()


def test_export_replaces_an_earlier_array_and_nothing_else(rng, tmp_path):
    trace = Trace.from_arrays([rng.integers(0, 4, (3, 1, 1))], 4)
    export_arrays(trace, tmp_path / "e.npy")
    export_arrays(trace, tmp_path / "e.npy")  # an earlier export: replaced
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ExpertcacheError, match="model.safetensors exists and is not a .npy array"):
        export_arrays(trace, tmp_path / "model.safetensors")  # was overwritten
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
    with pytest.raises(ExpertcacheError, match="is a folder; give a .npy file name"):
        export_arrays(trace, tmp_path / ".")  # was a ValueError traceback


def test_export_to_an_unwritable_path_names_that_path_and_leaves_no_temporary(rng, tmp_path):
    trace = Trace.from_arrays(rng.integers(0, 4, (2, 3, 1, 1)), 4)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ExpertcacheError, match=r"cannot write .*a_file/e\.npy"):
        export_arrays(trace, tmp_path / "a_file" / "e.npy")
    export_arrays(trace, tmp_path / "new" / "e.npy")  # missing folders are made
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["e.npy"]
    with pytest.raises(ExpertcacheError, match=r"cannot write .*a_file/w\.npy"):  # the ids were written all the same
        export_arrays(trace, tmp_path / "ids.npy", weights_path=tmp_path / "a_file" / "w.npy")
    assert not (tmp_path / "ids.npy").exists() and not list(tmp_path.glob(".*"))


def test_import_errors_name_the_file(tmp_path):
    np.save(tmp_path / "huge.npy", np.full((1, 2, 1, 1), 2**63 + 2, np.uint64))
    with pytest.raises(ExpertcacheError, match=r"huge\.npy: expert id 9223372036854775810 outside 0\.\.3"):  # was -9223372036854775806
        import_arrays(tmp_path / "huge.npy", 4)
    np.save(tmp_path / "three_d.npy", np.zeros((2, 3, 4), int))
    (tmp_path / "garbage.npy").write_bytes(b"not an array")
    with pytest.raises(ExpertcacheError, match=r"three_d\.npy: expert ids must be \[sequences"):
        import_arrays(tmp_path / "three_d.npy", 4)
    with pytest.raises(ExpertcacheError, match=r"garbage\.npy: not a readable \.npy array \(not \.npy data\)"):
        import_arrays(tmp_path / "garbage.npy", 4)
    with pytest.raises(ExpertcacheError, match="no such file"):
        import_arrays(tmp_path / "missing.npy", 4)
    np.save(tmp_path / "ragged.npy", np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    with pytest.raises(ExpertcacheError, match=r"ragged\.npy: not a readable \.npy array \(an array of Python objects"):
        import_arrays(tmp_path / "ragged.npy", 4)


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_bigmoe_import_keeps_every_row(tmp_path):
    trace = import_bigmoe(EXCERPT)  # gpt-oss-120b: prompt tokens 82-84 of 85, generated 85-91
    rows = read_rows(EXCERPT)
    assert (trace.num_moe_layers, trace.top_k, trace.num_experts) == (36, 2, 128)
    assert trace.phase.tolist() == [0] * 3 + [1] * 7
    assert trace.positions.tolist() == list(range(82, 92))
    routed = trace.experts != trace.pad_id
    assert routed.sum() == len(rows)
    # the last layer routes only the final prompt token in prefill
    assert routed[:, -1, 0].tolist() == [False] * 2 + [True] * 8
    for row in rows:
        t = int(row["step"]) - 82  # one turn, steps are token positions
        assert trace.experts[t, int(row["layer"]), int(row["slot"])] == int(row["expert"])
        assert trace.weights[t, int(row["layer"]), int(row["slot"])] == np.float16(float(row["weight"]))
    # the table's expert_bytes column is what the engine read: the layer's expert size on a miss, else 0
    read = {(int(r["layer"]), int(r["expert_bytes"])) for r in rows if r["expert_bytes"] != "0"}
    assert read == set(enumerate(trace.model.expert_bytes))
    assert trace.capture["recorded_read_bytes"] == sum(int(r["expert_bytes"]) for r in rows)
    assert trace.capture["recorded_residency"]["hit"] == sum(r["residency"] == "1" for r in rows)
    trace.save(tmp_path / "t")
    np.testing.assert_array_equal(Trace.load(tmp_path / "t").experts, trace.experts)
    # the bundled example is the same conversion of the whole file
    example = open_example("gpt-oss-120b")
    np.testing.assert_array_equal(example.experts[82:92], trace.experts)
    np.testing.assert_array_equal(example.weights[82:92], trace.weights)


def test_bigmoe_bad_files(tmp_path):
    (tmp_path / "a.csv").write_text("turn,phase\n0,0\n")
    with pytest.raises(ExpertcacheError, match="not a route_trace v1 file"):
        import_bigmoe(tmp_path / "a.csv")
    head = "# route_trace v1\n# model=m.gguf arch=x n_layer=2 n_expert=4 n_expert_used=2\n"
    cols = "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n"
    (tmp_path / "b.csv").write_text(head + cols + "0,1,0,0,0,3,0.5,0,10\n0,1,0,1,0,1,0.5,0,10\n0,1,0,1,1,2,0.5,0,10\n")
    with pytest.raises(ExpertcacheError, match=r"b\.csv:\d: MoE layer 0 of this token has 1 of its k=2 experts"):
        import_bigmoe(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text(head + cols + "0,1,0,0,0,9,0.5,0,10\n0,1,0,0,1,1,0.5,0,10\n")
    with pytest.raises(ExpertcacheError, match=r"c\.csv:4: expert outside 0\.\.3 \(header n_expert=4\)"):
        import_bigmoe(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text(head + cols + "0,1,0,-1,0,3,0.5,0,10\n0,1,0,-1,1,1,0.5,0,10\n")
    with pytest.raises(ExpertcacheError, match=r"d\.csv:4: layer outside 0\.\.1"):  # not layer L-1 by numpy's wrap-around
        import_bigmoe(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text(head + "# layer=1 expert_bytes=many\n" + cols + "0,1,0,0,0,3,0.5,0,10\n")
    with pytest.raises(ExpertcacheError, match="garbles a number"):
        import_bigmoe(tmp_path / "e.csv")
