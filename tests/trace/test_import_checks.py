"""Importers refuse incomplete or inconsistent routing, naming the line (or the sequence)."""

import subprocess
import sys

import numpy as np
import pytest

from expertcache import ExpertcacheError
from expertcache.trace.arrays_io import import_arrays
from expertcache.trace.bigmoe import import_bigmoe
from expertcache.trace.import_checks import check_imported_routing

EXPERT_BYTES = 2654208
COLUMNS = "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes"


def route_csv(experts, prompt):
    """A route_trace v1 file as the recording engine writes it: prompt rows layer-major (the last
    layer only for the final prompt token), then decode rows token-major; a miss reads the expert."""
    T, L, K = experts.shape
    lines = ["# route_trace v1", f"# model=/m/test-Q4.gguf arch=test n_layer={L} n_expert=16 n_expert_used={K}"]
    lines += [f"# layer={l} expert_bytes={EXPERT_BYTES} dense_bytes=1000" for l in range(L)]
    lines.append(COLUMNS)
    seen = set()

    def row(phase, t, l):
        for slot, e in enumerate(experts[t, l]):
            read = 0 if (l, e) in seen else EXPERT_BYTES
            seen.add((l, e))
            lines.append(f"0,{phase},{t},{l},{slot},{e},{0.5 - 0.1 * slot:.6f},{int(read == 0)},{read}")

    for l in range(L):
        for t in range(prompt) if l < L - 1 else [prompt - 1]:
            row(0, t, l)
    for t in range(prompt, T):
        for l in range(L):
            row(1, t, l)
    return lines


@pytest.fixture
def routing(distinct_ids):
    return distinct_ids((9, 4, 2), 16)  # 5 prompt tokens, 4 decode tokens, 4 layers, k = 2


def write(tmp_path, lines):
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_whole_file_imports_exactly(tmp_path, routing):
    trace = import_bigmoe(write(tmp_path, route_csv(routing, prompt=5)))
    expected = routing.copy()
    expected[:4, -1] = -1  # the last layer skipped the prompt tokens but the final one
    ids, _, _ = trace.to_arrays()
    np.testing.assert_array_equal(ids[0], expected)


def test_a_file_cut_at_a_layer_boundary_is_refused(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    header = 7  # 2 model lines, 4 layer lines, the column names
    cut = lines[:header + 2 * 5 * 2]  # prompt rows of layers 0 and 1 only
    with pytest.raises(ExpertcacheError, match=r"r\.csv:\d+: the token read up to this line has no MoE layer 2"):
        import_bigmoe(write(tmp_path, cut))


def test_a_cut_number_is_refused_with_its_line(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    last_miss = max(i for i, line in enumerate(lines) if line.endswith(f",{EXPERT_BYTES}"))
    lines[last_miss] = lines[last_miss][:-1]  # 2654208 -> 265420
    with pytest.raises(ExpertcacheError, match=rf"r\.csv:{last_miss + 1}: expert_bytes is neither 0 .* nor the header's"):
        import_bigmoe(write(tmp_path, lines))


def test_a_number_beyond_64_bits_is_refused_with_its_line(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    lines[-1] = "9" * 20 + lines[-1][lines[-1].index(","):]  # the turn: was an OverflowError traceback
    with pytest.raises(ExpertcacheError, match=rf"r\.csv:{len(lines)}: malformed field \(9+ is beyond a 64-bit integer\)"):
        import_bigmoe(write(tmp_path, lines))


def test_a_weight_that_is_not_a_finite_number_is_refused_with_its_line(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    for bad in ("nan", "inf"):
        fields = lines[-1].split(",")
        fields[6] = bad  # the weight column (turn,phase,step,layer,slot,expert,weight,...)
        edited = lines[:-1] + [",".join(fields)]
        with pytest.raises(ExpertcacheError, match=rf"r\.csv:{len(lines)}: weight must be a finite number"):
            import_bigmoe(write(tmp_path, edited))


def test_a_cut_line_is_refused_with_its_line(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    lines[-1] = lines[-1][:9]
    with pytest.raises(ExpertcacheError, match=rf"r\.csv:{len(lines)}: \d fields, the table has 9 \(a cut line\?\)"):
        import_bigmoe(write(tmp_path, lines))


def test_a_decode_token_missing_a_middle_layer_is_refused(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    gone = [i for i, line in enumerate(lines) if line.startswith("0,1,6,2,")]  # decode token 6, layer 2
    kept = [line for i, line in enumerate(lines) if i not in gone]
    with pytest.raises(ExpertcacheError, match=rf"r\.csv:{gone[0] + 2}: the token read up to this line has no MoE layer 2"):
        import_bigmoe(write(tmp_path, kept))


def test_an_expert_twice_in_a_token_is_refused(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    first = next(i for i, line in enumerate(lines) if line.startswith("0,1,7,1,0,"))
    other = lines[first].split(",")[5]
    fields = lines[first + 1].split(",")
    fields[5] = other
    lines[first + 1] = ",".join(fields)
    with pytest.raises(ExpertcacheError, match=rf"r\.csv:{first + 2}: MoE layer 1 lists expert {other} twice"):
        import_bigmoe(write(tmp_path, lines))


def test_a_row_given_twice_is_refused(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    lines.append(lines[-3])
    with pytest.raises(ExpertcacheError, match=rf"r\.csv:{len(lines)}: the same turn, phase, step, layer and slot"):
        import_bigmoe(write(tmp_path, lines))


def test_the_command_line_prints_one_line(tmp_path, routing):
    lines = route_csv(routing, prompt=5)
    write(tmp_path, lines[:-2])  # the last decode token lacks its last layer
    result = subprocess.run([sys.executable, "-m", "expertcache", "import", "bigmoe", "r.csv", "--out", "t"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "t").exists()
    assert result.stderr.startswith(f"error: r.csv:{len(lines) - 2}: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("edit, message", [
    (lambda ids: ids[1, 2, 0].__setitem__(1, ids[1, 2, 0, 0]), "sequence 1: token 2, MoE layer 0: expert .* twice"),
    (lambda ids: ids.fill(-1), "no token of these sequences is routed"),
    (lambda ids: ids[0, 0, 1].__setitem__(0, 16), "sequence 0: token 0, MoE layer 1: expert id 16 outside 0..15"),
    (lambda ids: ids[1, 3, 2].__setitem__(1, -2), "sequence 1: token 3, MoE layer 2: expert id -2 \\(only -1 means"),
])
def test_arrays_import_refuses_repeats_nothing_routed_and_ids_out_of_range(tmp_path, distinct_ids, edit, message):
    ids = distinct_ids((2, 5, 3, 2), 16)
    edit(ids)
    np.save(tmp_path / "e.npy", ids)
    with pytest.raises(ExpertcacheError, match=message):
        import_arrays(tmp_path / "e.npy", 16)


def test_the_shared_check_serves_line_per_token_formats():
    """As a JSONL importer uses it: one line per token, every layer required."""
    experts = np.array([[[0, 1], [2, 3]], [[4, 5], [-1, -1]]])  # token 1 lacks layer 1
    lines = np.broadcast_to(np.array([3, 4])[:, None, None], experts.shape)
    with pytest.raises(ExpertcacheError, match=r"^t\.jsonl:4: the token read up to this line has no MoE layer 1"):
        check_imported_routing("t.jsonl", experts, lines, (8, 8))
    experts[1, 1] = [6, 8]
    with pytest.raises(ExpertcacheError, match=r"^t\.jsonl:4: expert id 8 of MoE layer 1 outside 0\.\.7"):
        check_imported_routing("t.jsonl", experts, lines, (8, 8))
    experts[1, 1] = [6, -1]
    with pytest.raises(ExpertcacheError, match=r"^t\.jsonl:4: MoE layer 1 of this token has 1 of its k=2 experts"):
        check_imported_routing("t.jsonl", experts, lines, (8, 8))
    experts[1, 1] = [6, 7]
    check_imported_routing("t.jsonl", experts, lines, (8, 8))
    with pytest.raises(ExpertcacheError, match=r"^t\.jsonl: no token is routed"):
        check_imported_routing("t.jsonl", np.full((2, 2, 2), -1), lines, (8, 8))


@pytest.mark.parametrize("field, value, message", [
    ("n_layer", "1000000000", r"header says n_layer=1000000000, but the table's \d+ rows cannot route that many"),
    ("n_expert", "1" + "0" * 30, "experts per layer is more than any id type holds"),
])
def test_a_header_beyond_what_the_table_can_hold_is_refused_before_anything_is_sized(tmp_path, routing, field, value,
                                                                                     message):
    # n_layer=10^9 sized two lists by it (the process was killed for memory); a huge n_expert overflowed a C long
    lines = route_csv(routing, prompt=5)
    lines[1] = lines[1].replace(f"{field}=", f"{field}={value} old_{field}=")
    with pytest.raises(ExpertcacheError, match=message):
        import_bigmoe(write(tmp_path, lines))


@pytest.mark.parametrize("name, values, message", [
    ("weights", np.nan, "weights must be finite numbers within \\+-65504 \\(float16\\)"),  # imported as is
    ("weights", 1e6, "weights must be finite numbers within"),  # stored as inf, with a numpy warning
    ("tokens", 0.5, "tokens must be whole numbers"),  # truncated to 0
    ("tokens", 2.0**40, "tokens must lie in -2147483648..2147483647 \\(int32\\)"),  # wrapped around
])
def test_arrays_import_refuses_values_the_stored_type_would_change(tmp_path, distinct_ids, name, values, message):
    ids = distinct_ids((2, 5, 3, 2), 16)
    np.save(tmp_path / "e.npy", ids)
    np.save(tmp_path / "x.npy", np.full(ids.shape if name == "weights" else ids.shape[:2], values, np.float64))
    with pytest.raises(ExpertcacheError, match=message):
        import_arrays(tmp_path / "e.npy", 16, **{f"{name}_path": tmp_path / "x.npy"})
    np.save(tmp_path / "x.npy", np.full(ids.shape if name == "weights" else ids.shape[:2], 1.0))
    import_arrays(tmp_path / "e.npy", 16, **{f"{name}_path": tmp_path / "x.npy"})  # whole or in range: fine
