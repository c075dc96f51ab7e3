"""Trace format: round trips, crash safety, resume and clear errors on damaged traces."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from expertcache import ExpertcacheError, ModelInfo, Trace, TraceWriter
from expertcache.trace import DECODE, PREFILL
from expertcache.trace.format import save_array


def ragged_trace(rng, distinct_ids, lengths=(5, 1, 9), layers=3, k=2, experts=6):
    seqs = [distinct_ids((t, layers, k), experts) for t in lengths]
    weights = [rng.random((t, layers, k)).astype(np.float32) for t in lengths]
    phases = [np.r_[np.zeros(t // 2), np.ones(t - t // 2)].astype(np.uint8) for t in lengths]
    return seqs, weights, phases, Trace.from_arrays(
        seqs, experts, weights=weights, phase=phases, domains=["b" if i == 1 else "a" for i in range(len(lengths))]
    )


def test_from_arrays_keeps_every_value(rng, distinct_ids):
    seqs, weights, phases, trace = ragged_trace(rng, distinct_ids)
    assert (trace.num_sequences, trace.num_tokens, trace.num_moe_layers, trace.top_k) == (3, 15, 3, 2)
    assert trace.seq_offsets.tolist() == [0, 5, 6, 15]
    assert trace.experts.dtype == np.uint8
    np.testing.assert_array_equal(trace.experts[trace.sequence(2)], seqs[2])
    np.testing.assert_array_equal(trace.weights[trace.sequence(0)], weights[0].astype(np.float16))
    np.testing.assert_array_equal(trace.phase, np.concatenate(phases))
    assert trace.domains == ["a", "b"]
    assert trace.seq_domain.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(trace.layer_experts(1), np.concatenate(seqs)[:, 1, :])


def test_save_load_round_trip_across_shards(rng, distinct_ids, tmp_path):
    seqs, _, _, trace = ragged_trace(rng, distinct_ids, lengths=(7, 3, 11, 2, 5))
    with TraceWriter(tmp_path / "t", trace.model, shard_tokens=8) as writer:
        for i, seq in enumerate(seqs):
            s = trace.sequence(i)
            writer.add_sequence(seq, trace.weights[s], phase=trace.phase[s], domain=trace.domains[trace.seq_domain[i]])
    loaded = Trace.load(tmp_path / "t")
    assert len(list((tmp_path / "t" / "shards").iterdir())) == 3  # 7+3, 11, 2+5
    for name in ("experts", "weights", "phase", "tokens", "positions", "seq_lengths"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(trace, name))
    assert [loaded.domains[d] for d in loaded.seq_domain] == [trace.domains[d] for d in trace.seq_domain]
    assert isinstance(loaded.shard_arrays("experts")[0], np.memmap)  # arrays stay on disk


def test_negative_ids_become_pad_and_export_as_minus_one(tmp_path):
    experts = np.array([[[[0, 1]], [[-1, -1]], [[2, 3]]]])  # [S=1, T=3, L=1, K=2]
    trace = Trace.from_arrays(experts, 4)
    assert trace.experts[1, 0].tolist() == [trace.pad_id] * 2 == [255, 255]
    ids, _, _ = trace.to_arrays()
    np.testing.assert_array_equal(ids, experts)


def test_id_type_is_the_smallest_that_fits():
    assert Trace.from_arrays(np.zeros((1, 2, 1, 1), int), 255).experts.dtype == np.uint8
    assert Trace.from_arrays(np.zeros((1, 2, 1, 1), int), 256).experts.dtype == np.uint16


@pytest.mark.parametrize(
    "experts, num_experts, message",
    [
        (np.zeros((1, 2, 1, 3), int), 2, "top-k 3 is larger than the number of experts 2"),
        (np.full((1, 2, 1, 1), 5), 4, "sequence 0: token 0, MoE layer 0: expert id 5 outside 0..3"),
        (np.array([[[[1, 2]], [[3, 3]]]]), 4, "sequence 0: token 1, MoE layer 0: expert 3 twice in one token's k"),
        (np.full((2, 3, 1, 2), -1), 4, "no token of these sequences is routed"),
        (np.zeros((1, 2, 1, 1), float), 4, "must be integers"),
    ],
)
def test_bad_arrays_are_refused(experts, num_experts, message):
    with pytest.raises(ExpertcacheError, match=message):
        Trace.from_arrays(experts, num_experts)


@pytest.mark.parametrize("phase, message", [([[0, 1, 2]], "sequence 0: token 2 has phase 2"),
                                            ([[0, -1, 1]], "sequence 0: token 1 has phase -1"),
                                            ([[0, 1]], r"phase has shape \(2,\), expected one value or \(3,\)")])
def test_phases_other_than_prefill_and_decode_are_refused(phase, message):
    with pytest.raises(ExpertcacheError, match=message):
        Trace.from_arrays(np.zeros((1, 3, 1, 1), int), 4, phase=np.array(phase))


def test_weights_that_are_not_numbers_are_refused():
    with pytest.raises(ExpertcacheError, match="weights must be numbers"):
        Trace.from_arrays(np.zeros((1, 2, 1, 1), int), 4, weights=np.full((1, 2, 1, 1), "a"))


def test_interrupted_shard_is_ignored_and_resume_skips_finished_keys(rng, tmp_path):
    model = ModelInfo.synthetic(2, 4, 1)
    path = tmp_path / "t"
    with TraceWriter(path, model, shard_tokens=1) as writer:
        writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="s0")
    (path / "shards" / "00001.tmp-999").mkdir()  # what a kill during a shard write leaves
    assert Trace.load(path).num_sequences == 1
    writer = TraceWriter(path, model, shard_tokens=1)
    assert writer.done_keys == {"s0"}
    writer.add_sequence(rng.integers(0, 4, (2, 2, 1)), key="s1")
    writer.close()
    assert sorted(p.name for p in (path / "shards").iterdir()) == ["00000", "00001"]
    assert Trace.load(path).seq_lengths.tolist() == [3, 2]


def test_resume_with_other_settings_is_refused(tmp_path):
    TraceWriter(tmp_path / "t", ModelInfo.synthetic(2, 4, 1)).close()
    with pytest.raises(ExpertcacheError, match="other settings"):
        TraceWriter(tmp_path / "t", ModelInfo.synthetic(2, 8, 1))


def test_overwrite_replaces_a_trace_and_refuses_to_remove_anything_else(rng, tmp_path, monkeypatch):
    model = ModelInfo.synthetic(2, 4, 1)
    path = tmp_path / "t"
    with TraceWriter(path, model) as writer:
        writer.add_sequence(rng.integers(0, 4, (3, 2, 1)))
    with TraceWriter(path, ModelInfo.synthetic(2, 8, 1), overwrite=True) as writer:  # a trace: replaced
        writer.add_sequence(rng.integers(0, 8, (2, 2, 1)))
    assert Trace.load(path).seq_lengths.tolist() == [2] and Trace.load(path).model.num_experts == (8, 8)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "not ours"}')
    file = tmp_path / "file.txt"
    file.write_text("x")
    for target in (other, file):
        with pytest.raises(ExpertcacheError, match="is not a trace"):
            TraceWriter(target, model, overwrite=True)
    assert (other / "manifest.json").exists() and file.read_text() == "x"
    for mine in (path / "notes.txt", path / "shards" / "mine", path / "shards" / "00000" / "plot.png"):  # were removed
        mine.write_text("mine")
        with pytest.raises(ExpertcacheError, match=f"holds {mine.relative_to(path)}, which no trace writes"):
            TraceWriter(path, model, overwrite=True)
        assert mine.read_text() == "mine"
        mine.unlink()
    monkeypatch.chdir(path / "shards")  # the working directory inside a trace: never removed
    with pytest.raises(ExpertcacheError, match="holds the working directory"):
        TraceWriter(path, model, overwrite=True)
    assert Trace.load(path).seq_lengths.tolist() == [2]


def test_kill_9_leaves_a_valid_trace_of_finished_shards(tmp_path):
    path = tmp_path / "t"
    script = textwrap.dedent(f"""
        import numpy as np, os, sys
        from expertcache import ModelInfo, TraceWriter
        w = TraceWriter({str(path)!r}, ModelInfo.synthetic(2, 4, 1), shard_tokens=4)
        for i in range(1000):
            w.add_sequence(np.full((2, 2, 1), i % 4), key=str(i))
            if i == 5:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    trace = Trace.load(path)
    assert trace.num_sequences % 2 == 0 and trace.num_sequences >= 6  # whole shards of 2 sequences
    np.testing.assert_array_equal(trace.experts[::2, 0, 0], np.arange(trace.num_sequences) % 4)


@pytest.fixture
def saved(rng, distinct_ids, tmp_path):
    _, _, _, trace = ragged_trace(rng, distinct_ids)
    trace.save(tmp_path / "t")
    return tmp_path / "t"


def test_truncated_array_names_the_file(saved):
    file = saved / "shards" / "00000" / "experts.npy"
    file.write_bytes(file.read_bytes()[:-5])
    with pytest.raises(ExpertcacheError, match=r"experts\.npy: truncated"):
        Trace.load(saved)


def test_corrupt_manifest_names_the_file(saved):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ExpertcacheError, match=r"manifest\.json: corrupt trace manifest"):
        Trace.load(saved)


def test_negative_expert_sizes_and_text_counts_in_a_manifest_are_refused(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    layers = len(manifest["model"]["moe_layers"])
    manifest["model"]["expert_bytes"] = [-4096] * layers  # would make budgets hold "more" than everything
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExpertcacheError, match=r"manifest\.json: bad model description \(expert_bytes must not be negative, got -4096\)"):
        Trace.load(saved)
    manifest["model"].update(expert_bytes=[], top_k="2")
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExpertcacheError, match=r"\(top_k must be a whole number, got '2'\)"):  # was a TypeError's text
        Trace.load(saved)


def test_mismatched_array_names_the_file(saved):
    meta_path = saved / "shards" / "00000" / "shard.json"
    meta = json.loads(meta_path.read_text())
    np.save(saved / "shards" / "00000" / "weights.npy", np.zeros((15, 3, 3), np.float16))  # wrong K
    meta["arrays"]["weights"]["bytes"] = (saved / "shards" / "00000" / "weights.npy").stat().st_size
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ExpertcacheError, match=r"weights\.npy: shape \(15, 3, 3\)"):
        Trace.load(saved)


@pytest.mark.parametrize("edit, where, message", [
    (lambda meta, manifest: meta["arrays"]["experts"].pop("bytes"), r"experts\.npy", "not recorded"),
    (lambda meta, manifest: meta.update(domains=[]), r"seq_domain\.npy", "domain index out of range"),
    (lambda meta, manifest: manifest["model"].update(num_experts="x"), r"manifest\.json", "bad model description"),
])
def test_hand_edited_descriptions_are_one_line_errors(saved, edit, where, message):
    meta_path, manifest_path = saved / "shards" / "00000" / "shard.json", saved / "manifest.json"
    meta, manifest = json.loads(meta_path.read_text()), json.loads(manifest_path.read_text())
    edit(meta, manifest)
    meta_path.write_text(json.dumps(meta))
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ExpertcacheError, match=f"{where}: .*{message}"):
        Trace.load(saved)


def _rewrite(file, edit):
    """Change an array file in place, keeping its size (np.load/np.save keep the header)."""
    array = np.load(file)
    edit(array)
    np.save(file, array)


def _forget_checksums(trace_dir):
    """Make a trace look written before checksums: only the content checks remain."""
    for meta_path in (trace_dir / "shards").glob("*/shard.json"):
        meta = json.loads(meta_path.read_text())
        for entry in meta["arrays"].values():
            del entry["crc32"]
        meta_path.write_text(json.dumps(meta))


def test_same_size_damage_is_caught_by_the_checksum_on_first_use(saved):
    file = saved / "shards" / "00000" / "weights.npy"
    _rewrite(file, lambda a: a.__setitem__((0, 0, 0), 7))
    trace = Trace.load(saved)  # opening maps the files; the damaged array fails when read
    assert trace.experts.shape == (15, 3, 2)
    with pytest.raises(ExpertcacheError, match=r"weights\.npy: damaged \(crc32 [0-9a-f]{8}, shard\.json records"):
        trace.weights


def test_a_trace_without_checksums_loads_the_same(saved):
    before = Trace.load(saved)
    _forget_checksums(saved)
    after = Trace.load(saved)
    for name in ("experts", "weights", "phase", "tokens", "seq_lengths"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))


@pytest.mark.parametrize("name, edit, message", [
    ("experts", lambda a: a.__setitem__((4, 1, 0), 6), "token 4, MoE layer 1: expert id 6 outside 0..5"),
    ("experts", lambda a: a.__setitem__((4, 1, 0), a[4, 1, 1]), "token 4, MoE layer 1: expert .* twice"),
    ("experts", lambda a: a.__setitem__(Ellipsis, 255), "no token is routed"),
    ("phase", lambda a: a.__setitem__(3, 2), "token 3 has phase 2"),
    ("seq_lengths", lambda a: a.__setitem__(slice(0, 2), [a[0] + 2, a[1] - 2]), "sequence length -1 at entry 1 is neg"),
])
def test_content_checks_guard_kernels_where_no_checksum_is_recorded(saved, name, edit, message):
    _forget_checksums(saved)
    _rewrite(saved / "shards" / "00000" / f"{name}.npy", edit)
    with pytest.raises(ExpertcacheError, match=rf"{name}\.npy: {message}"):
        trace = Trace.load(saved)
        trace.experts, trace.phase


def test_other_version_and_missing_trace(saved, tmp_path):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["version"] = 99
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExpertcacheError, match="version 99"):
        Trace.load(saved)
    with pytest.raises(ExpertcacheError, match="no such trace"):
        Trace.load(tmp_path / "nope")


def test_select_and_domain_views(rng, distinct_ids):
    seqs, _, _, trace = ragged_trace(rng, distinct_ids)
    only_a = trace.with_domain("a")
    assert only_a.num_sequences == 2
    np.testing.assert_array_equal(only_a.experts, np.concatenate([seqs[0], seqs[2]]))
    with pytest.raises(ExpertcacheError, match="no domain 'zzz'"):
        trace.with_domain("zzz")


def test_phase_constants():
    assert (PREFILL, DECODE) == (0, 1)


def test_seq2seq_capture_folder_points_to_its_stacks(tmp_path):
    (tmp_path / "stacks.json").write_text(json.dumps({"stacks": ["encoder", "decoder"]}))
    with pytest.raises(ExpertcacheError, match=r"seq2seq capture .* open .*encoder or .*decoder"):
        Trace.load(tmp_path)


@pytest.mark.parametrize("where", ["save_array", "Path.rename"])
def test_a_commit_interrupted_anywhere_commits_once_when_retried(rng, tmp_path, monkeypatch, where):
    """Ctrl-C inside a shard write (before its rename, or just after it), then close(): one shard."""
    from expertcache.trace import writer as writer_module

    writer = TraceWriter(tmp_path / "t", ModelInfo.synthetic(2, 4, 1))
    writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="s0")
    owner_name, _, name = where.rpartition(".")
    owner = getattr(writer_module, owner_name) if owner_name else writer_module
    real = getattr(owner, name)

    def interrupted(*args, **kwargs):
        if name == "rename":
            real(*args, **kwargs)  # the rename happened; the bookkeeping after it did not
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, name, interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.flush()
    monkeypatch.undo()
    writer.close()
    assert sorted(p.name for p in (tmp_path / "t" / "shards").iterdir()) == ["00000"]
    assert writer.done_keys == {"s0"} and Trace.load(tmp_path / "t").seq_lengths.tolist() == [3]


def test_saved_progress_is_a_trace_until_the_next_commit_replaces_it(rng, tmp_path):
    """A generation's sequence in progress, committed with what is buffered: a kill keeps it; the
    sequence added whole later takes its place (not beside it)."""
    model = ModelInfo.synthetic(2, 4, 1)
    path = tmp_path / "t"
    writer = TraceWriter(path, model, shard_tokens=100)
    first, second = rng.integers(0, 4, (3, 2, 1)), rng.integers(0, 4, (9, 2, 1))
    writer.add_sequence(first, key="a")
    writer.save_progress(second[:4], phase=DECODE, key="b")
    saved = Trace.load(path)  # what a kill -9 now leaves
    assert saved.seq_lengths.tolist() == [3, 4]
    np.testing.assert_array_equal(saved.experts, np.concatenate([first, second[:4]]))
    assert TraceWriter(path, model).done_keys == {"a"}  # a resumed writer: "b" is not done
    opened = Trace.load(path)
    writer.save_progress(second[:7], phase=DECODE)
    assert Trace.load(path).seq_lengths.tolist() == [3, 7]
    with pytest.raises(ExpertcacheError, match="replaced since the trace was opened"):  # was "damaged"
        np.asarray(opened.experts)
    writer.add_sequence(second, key="b")
    writer.close()
    assert sorted(p.name for p in (path / "shards").iterdir()) == ["00000"]
    np.testing.assert_array_equal(Trace.load(path).experts, np.concatenate([first, second]))


def test_a_shard_replacement_killed_mid_swap_is_put_back_on_resume(rng, tmp_path):
    model = ModelInfo.synthetic(2, 4, 1)
    path = tmp_path / "t"
    with TraceWriter(path, model, shard_tokens=1) as writer:
        writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="s0")
    shards = path / "shards"
    (shards / "00000").rename(shards / f".00000.old-{2**22 + 12345}")  # moved aside, the new one not yet in
    writer = TraceWriter(path, model, shard_tokens=1)
    assert writer.done_keys == {"s0"} and sorted(p.name for p in shards.iterdir()) == ["00000"]
    writer.close()


def test_commit_every_seconds_bounds_what_a_kill_loses(rng, tmp_path, monkeypatch):
    from expertcache.trace import writer as writer_module

    clock = [1000.0]
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: clock[0])
    writer = TraceWriter(tmp_path / "t", ModelInfo.synthetic(2, 4, 1), commit_seconds=60)

    def shards():
        return sorted(p.name for p in (tmp_path / "t" / "shards").iterdir())

    writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="a")
    clock[0] += 59
    writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="b")
    assert shards() == []  # far below shard_tokens, and less than a minute since opening
    clock[0] += 1
    writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="c")
    assert shards() == ["00000"] and writer.done_keys == {"a", "b", "c"}
    clock[0] += 30
    writer.add_sequence(rng.integers(0, 4, (3, 2, 1)), key="d")
    assert shards() == ["00000"]  # the clock restarts at each commit
    with pytest.raises(ExpertcacheError, match="commit interval must be >= 0"):
        TraceWriter(tmp_path / "u", ModelInfo.synthetic(2, 4, 1), commit_seconds=-1)


def test_save_without_overwrite_suggests_it_only_where_it_would_replace(rng, tmp_path):
    trace = Trace.from_arrays(rng.integers(0, 4, (1, 3, 2, 1)), 4)
    trace.save(tmp_path / "t")
    (tmp_path / "empty").mkdir()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    (tmp_path / "file.txt").write_text("x")
    for name, message in [("t", "already exists; choose another output or pass --overwrite"),
                          ("empty", "already exists; choose another output or pass --overwrite"),
                          ("folder", "exists and is not a trace; choose another output$"),
                          ("file.txt", "exists and is not a trace; choose another output$")]:
        with pytest.raises(ExpertcacheError, match=message):
            trace.save(tmp_path / name)
    trace.save(tmp_path / "empty", overwrite=True)
    assert Trace.load(tmp_path / "empty").num_tokens == 3


def test_a_sequence_of_no_tokens_is_refused():
    # curves counted its neighbour's requests for it (reduceat), or crashed, depending on where it sat
    with pytest.raises(ExpertcacheError, match="sequence 1 has no tokens"):
        Trace.from_arrays([np.array([[[0, 1]]]), np.zeros((0, 1, 2), int), np.array([[[1, 2]]])], 4)


def test_an_interrupted_save_keeps_the_earlier_trace_whole(rng, distinct_ids, tmp_path, monkeypatch):
    # `import` saves a whole trace: a Ctrl-C used to leave its first shards under the final name,
    # read by every command as the complete trace (and --overwrite had already removed the old one).
    *_, trace = ragged_trace(rng, distinct_ids)
    path = tmp_path / "t"
    trace.save(path)
    added = []

    def add_then_stop(self, *args, **kwargs):
        if len(added) == 2:
            raise KeyboardInterrupt
        added.append(original(self, *args, **kwargs))
        self.flush()  # the shard is on disk before the interruption

    bigger = Trace.from_arrays([distinct_ids((4, 3, 2), 6)] * 5, 6)
    original = TraceWriter.add_sequence
    monkeypatch.setattr(TraceWriter, "add_sequence", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(tmp_path / "new")
    with pytest.raises(KeyboardInterrupt):
        bigger.save(path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # nothing of either interrupted save
    assert Trace.load(path).seq_lengths.tolist() == [5, 1, 9]


@pytest.mark.parametrize("field, value, message", [
    ("num_experts", [8.5, 8, 8], "num_experts must hold whole numbers, got 8.5"),  # read as 8
    ("num_experts", ["8", "8", "8"], "num_experts must hold whole numbers, got '8'"),
    ("moe_layers", [0, 0, 1], r"MoE layer indices \(0, 0, 1\) must rise, each layer once"),
    ("num_shared_experts", -1, "num_shared_experts >= 0, got 3 and -1"),  # printed as "-1 shared"
    ("num_layers", -3, "num_layers must be >= 1"),  # was "outside 0..-4"
    ("dense_bytes", [1e300] * 3, "dense_bytes must hold whole numbers"),
    ("name", 5, "name, architecture and dtype must be strings"),
    ("stack", "weird", "stack decoder or encoder"),
    ("extra", "x", "extra a dict"),
])
def test_a_model_description_the_manifest_garbles_is_refused(saved, field, value, message):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert len(manifest["model"]["moe_layers"]) == 3 and manifest["model"]["num_layers"] == 3
    manifest["model"][field] = value
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExpertcacheError, match=message):
        Trace.load(saved)


def test_a_sequence_index_counts_from_the_end_and_outside_is_an_error(rng, distinct_ids):
    seqs, _, _, trace = ragged_trace(rng, distinct_ids)  # lengths 5, 1, 9
    np.testing.assert_array_equal(trace.experts[trace.sequence(-1)], seqs[2])  # was an empty slice
    for bad in (3, -4, "0", 1.0):
        with pytest.raises(ExpertcacheError, match="no sequence .*: the trace has 3 \\(0..2\\)"):
            trace.sequence(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(experts=np.zeros((2, 3, 1)), num_experts=4), "experts must be \\[sequences, tokens, MoE layers, k\\]"),
    (dict(num_experts=3.5), "num_experts must hold whole numbers, got 3.5"),  # was taken as 3
    (dict(num_experts=float("nan")), "num_experts must hold whole numbers"),
    (dict(num_experts=4, domains=5), "domains must be one label or a list of labels"),
    (dict(num_experts=4, domains=[5]), "domains must be one label or a list of labels"),  # saved as 5
    (dict(model="x"), "model must be a ModelInfo, got str"),
])
def test_from_arrays_refuses_what_it_would_misread(kwargs, message):
    args = dict(experts=np.zeros((1, 3, 1, 1), int)) | kwargs
    with pytest.raises(ExpertcacheError, match=message):
        Trace.from_arrays(args.pop("experts"), **args)


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    np.array([True, False, True]),
    np.linspace(0, 1, 7, dtype=np.float16),
    np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
    np.zeros((0, 4), np.uint8),
])
def test_save_array_writes_the_bytes_np_save_writes(array, tmp_path):
    with open(tmp_path / "ours.npy", "wb") as f:
        save_array(f, array)
    np.save(tmp_path / "numpy.npy", np.ascontiguousarray(array), allow_pickle=False)
    assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    assert np.array_equal(np.load(tmp_path / "ours.npy"), array)


def test_an_interrupt_during_save_array_stays_an_interrupt(tmp_path):
    """np.save into a real file lets numpy's tofile turn some interrupts into a TypeError about
    the file object (about 6 in 1 000 here); interrupts timed to land inside the write must all
    stay interrupts."""
    program = textwrap.dedent(f"""
        import signal, time, numpy as np
        from expertcache.trace.format import save_array
        a = np.arange(200_000, dtype=np.int32)
        def stop(*_):
            raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, stop)
        others, interrupts = set(), 0
        for i in range(3000):
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.0001 + (i % 50) * 0.00002)
                with open({str(tmp_path / "a.npy")!r}, "wb") as f:
                    save_array(f, a)
                time.sleep(0.002)  # the one alarm lands here if the write ended first
            except KeyboardInterrupt:
                interrupts += 1
            except BaseException as e:
                others.add(type(e).__name__)
        print(sorted(others), interrupts)
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    others, interrupts = done.stdout.strip().rsplit(" ", 1)
    assert others == "[]" and int(interrupts) == 3000, done.stdout
