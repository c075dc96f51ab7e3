"""Corpus sources and window sampling, against hand-built sources and a transparent tokenizer."""

import gzip
import itertools
import json
import sys
import types

import numpy as np
import pytest

from expertcache.errors import ExpertcacheError
from expertcache.trace.corpus import (
    DEMO_DOMAINS,
    Domain,
    corpus_description,
    demo_tokenizer,
    open_sources,
    sample_windows,
)
from expertcache.trace.corpus.sampling import READ_FACTOR

EOS = 10**6


class NumberTokenizer:
    """Each whitespace-separated integer of a text is one token: the stream is known exactly."""

    eos_token_id = EOS
    sep_token_id = None

    def __init__(self):
        self.calls = 0

    def __call__(self, texts, add_special_tokens=True, verbose=True):
        assert add_special_tokens is False
        self.calls += len(texts)
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}


def numbers_domain(name, sizes, first=0):
    """Documents of consecutive integers: document d holds sizes[d] tokens, all distinct."""
    starts = np.cumsum([first, *sizes])

    def read():
        for start, size in zip(starts, sizes):
            yield " ".join(map(str, range(start, start + size)))

    return Domain(name, {"kind": "test"}, read)


def stream_of(domain):
    """The token stream sampling must cut from: documents joined by one EOS each."""
    parts = [[int(w) for w in text.split()] for text in domain.texts()]
    return np.array(list(itertools.chain.from_iterable(p + [EOS] for p in parts))[:-1])


def window_starts(samples, stream):
    position = {int(token): i for i, token in enumerate(stream) if token != EOS}
    starts = []
    for sample in samples:
        start = position[int(sample.token_ids[0])] if sample.token_ids[0] != EOS else None
        if start is None:  # a window may begin on a separator: locate it by its second token
            start = position[int(sample.token_ids[1])] - 1
        window = stream[start : start + len(sample.token_ids)]
        np.testing.assert_array_equal(sample.token_ids, window)
        starts.append(start)
    return np.array(starts)


# --- sources -------------------------------------------------------------------------------


def test_text_file_is_one_domain_named_by_its_stem(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsecond line\n")
    (domain,) = open_sources([str(path)])
    assert domain.name == "notes"
    assert list(domain.texts()) == ["first line\nsecond line\n"]
    assert domain.description["kind"] == "file"
    (renamed,) = open_sources([f"mine={path}"])
    assert renamed.name == "mine" and list(renamed.texts()) == list(domain.texts())


def test_large_file_is_read_in_parts_cut_at_line_ends(tmp_path, monkeypatch):
    monkeypatch.setattr("expertcache.trace.corpus.sources.PART_CHARS", 10)
    path = tmp_path / "big.txt"
    path.write_text("aaaa\nbbbb\ncccc\ndd\n")
    (domain,) = open_sources([str(path)])
    assert list(domain.texts()) == ["aaaa\nbbbb\n", "cccc\ndd\n"]


def test_folder_reads_text_files_recursively_in_path_order(tmp_path):
    files = {
        "b.md": "bee", "a/z.py": "zed", "a/c.txt": "cee", "a/deep/x.tex": "ex",
        "image.png": "not text", ".hidden/h.txt": "hidden", "a/__pycache__/m.py": "cached",
        "empty.rst": "  \n",
    }
    for relative, text in files.items():
        (tmp_path / "docs" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / relative).write_text(text)
    (domain,) = open_sources([str(tmp_path / "docs")])
    assert domain.name == "docs"
    assert list(domain.texts()) == ["cee", "ex", "zed", "bee"]  # a/c, a/deep/x, a/z, b
    assert domain.description["files"] == 5  # the blank .rst counts as a file, not a document


def test_jsonl_reads_the_named_field_skipping_blank_lines(tmp_path):
    path = tmp_path / "web.jsonl"
    path.write_text('{"body": "one", "id": 1}\n\n{"body": "two", "id": 2}\n')
    (domain,) = open_sources([f"{path}:body"])
    assert domain.name == "web"
    assert list(domain.texts()) == ["one", "two"]
    assert domain.description["field"] == "body"
    packed = tmp_path / "packed.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(json.dumps({"text": "zipped"}) + "\n")
    (zipped,) = open_sources([str(packed)])  # FIELD defaults to "text"
    assert zipped.name == "packed" and list(zipped.texts()) == ["zipped"]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"body": "x"}\n', r"web.jsonl:1: no field 'text' \(has: body\)"),
        ('{"text": "ok"}\n{"title": "x"}\n', r"web.jsonl:2: no field 'text'"),
        ('{"text": 3}\n', r"web.jsonl:1: field 'text' is int, not text"),
        ("{not json\n", r"web.jsonl:1: not valid JSON"),
        ('["text"]\n', r"web.jsonl:1: no field 'text' \(has: not an object\)"),
    ],
)
def test_bad_jsonl_records_name_file_line_and_field(tmp_path, content, expected):
    path = tmp_path / "web.jsonl"
    path.write_text(content)
    with pytest.raises(ExpertcacheError, match=expected):
        for domain in open_sources([f"{path}:text"]):
            list(domain.texts())


def test_user_mistakes_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "data.bin").write_text("x")
    (tmp_path / "a.txt").write_text("a")
    cases = {
        str(tmp_path / "missing.txt"): "not found",
        f"{tmp_path / 'missing.jsonl'}:text": "not found",
        str(tmp_path / "empty.txt"): "has no text",
        str(tmp_path / "nothing"): "has no text files",
        "demo:poetry": "unknown demo domain 'poetry'",
        "hf:only-a-name": "expected hf:DATASET",
    }
    for spec, message in cases.items():
        with pytest.raises(ExpertcacheError, match=message) as raised:
            open_sources([spec])
        assert "\n" not in str(raised.value)
    with pytest.raises(ExpertcacheError, match="two corpus sources are named 'a'"):
        open_sources([str(tmp_path / "a.txt"), str(tmp_path / "a.txt")])
    with pytest.raises(ExpertcacheError, match="no corpus source"):
        open_sources([])


def test_hf_source_without_datasets_installed_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ExpertcacheError, match="need the `datasets` package"):
        open_sources(["hf:wikitext:wikitext-2-raw-v1:train:text"])


def test_hf_source_reads_the_field_of_a_locally_available_split(monkeypatch):
    loaded = []

    class FakeSplit(list):
        column_names = ["text", "label"]

    def load_dataset(name, config, split):
        loaded.append((name, config, split))
        if name == "offline/missing":
            raise ConnectionError("Couldn't reach the Hub\nlong details")
        return FakeSplit([{"text": "alpha", "label": 0}, {"text": "beta", "label": 1}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (domain,) = open_sources(["hf:org/reviews:plain:test:text"])
    assert domain.name == "reviews" and list(domain.texts()) == ["alpha", "beta"]
    assert loaded == [("org/reviews", "plain", "test")]
    assert domain.description["dataset"] == "org/reviews"
    (unconfigured,) = open_sources(["r=hf:org/reviews:train:text"])
    assert unconfigured.name == "r" and loaded[-1] == ("org/reviews", None, "train")
    with pytest.raises(ExpertcacheError, match=r"no field 'body' \(has: text, label\)"):
        open_sources(["hf:org/reviews:train:body"])
    with pytest.raises(ExpertcacheError, match="offline: Couldn't reach the Hub$"):
        open_sources(["hf:offline/missing:train:text"])


# --- sampling ------------------------------------------------------------------------------


def test_windows_are_exact_non_overlapping_slices_of_the_eos_joined_stream():
    domain = numbers_domain("nums", [300, 50, 700, 120])
    stream = stream_of(domain)
    samples = list(sample_windows([domain], NumberTokenizer(), samples=10, length=64, seed=3))
    assert [s.key for s in samples] == [f"nums/{i}" for i in range(10)]
    assert all(s.domain == "nums" and s.token_ids.dtype == np.int64 for s in samples)
    assert all(s.token_ids.shape == (64,) for s in samples)
    starts = window_starts(samples, stream)
    assert np.all(np.diff(starts) >= 64)  # sorted and non-overlapping
    assert starts[-1] + 64 <= len(stream)


def test_sampling_is_seeded_and_independent_of_the_other_domains():
    a, b = numbers_domain("a", [2000]), numbers_domain("b", [1500], first=10**5)
    tokenizer = NumberTokenizer()
    both = list(sample_windows([a, b], tokenizer, samples=4, length=32, seed=7))
    again = list(sample_windows([a, b], tokenizer, samples=4, length=32, seed=7))
    alone = list(sample_windows([b], tokenizer, samples=4, length=32, seed=7))
    other = list(sample_windows([a, b], tokenizer, samples=4, length=32, seed=8))
    keys = lambda samples: [(s.key, s.token_ids.tolist()) for s in samples]
    assert keys(both) == keys(again)
    assert keys(both)[4:] == keys(alone)
    assert keys(both) != keys(other)
    assert [s.domain for s in both] == ["a"] * 4 + ["b"] * 4


def test_short_domain_overlaps_windows_and_too_short_domain_is_an_error():
    domain = numbers_domain("small", [40, 30])  # 71 tokens with the separator
    stream = stream_of(domain)
    samples = list(sample_windows([domain], NumberTokenizer(), samples=5, length=50, seed=0))
    starts = window_starts(samples, stream)
    assert len(set(starts.tolist())) == 5 and starts.max() <= len(stream) - 50
    tiny = numbers_domain("tiny", [20])
    message = "'tiny' has only 20 tokens, fewer than one window of 50"
    with pytest.raises(ExpertcacheError, match=message):
        next(sample_windows([domain, tiny], NumberTokenizer(), samples=1, length=50))
    with pytest.raises(ExpertcacheError, match="must be positive"):
        next(sample_windows([domain], NumberTokenizer(), samples=0, length=50))
    with pytest.raises(ExpertcacheError, match="non-negative"):
        next(sample_windows([domain], NumberTokenizer(), samples=1, length=50, seed=-1))


def test_reading_stops_at_the_first_document_boundary_past_the_budget(monkeypatch):
    def endless():  # documents of 99 tokens: with its separator each adds 100 to the stream
        for d in itertools.count():
            if d > 10_000:
                raise AssertionError("sampling read far past its budget")
            yield " ".join(map(str, range(d * 100, d * 100 + 99)))

    monkeypatch.setattr("expertcache.trace.corpus.sampling._BATCH_CHARS", 1)  # one doc per batch
    tokenizer = NumberTokenizer()
    domain = Domain("endless", {"kind": "test"}, endless)
    samples = list(sample_windows([domain], tokenizer, samples=3, length=100, seed=1))
    assert len(samples) == 3
    # budget 4 * 3 * 100 = 1200 tokens; after d documents the stream holds 100 d - 1 tokens
    assert READ_FACTOR == 4 and tokenizer.calls == 13
    assert max(int(t) for s in samples for t in s.token_ids if t != EOS) < 13 * 100


def test_separator_falls_back_to_sep_then_to_a_blank_line():
    class SepTokenizer(NumberTokenizer):
        eos_token_id = None
        sep_token_id = 7

    class BareTokenizer(NumberTokenizer):
        eos_token_id = None

        def __call__(self, texts, add_special_tokens=True, verbose=True):
            blank = [[5, 5] if t == "\n\n" else [int(w) for w in t.split()] for t in texts]
            return {"input_ids": blank}

    domain = Domain("d", {}, lambda: ["1 2", "3 4"])
    (sep,) = sample_windows([domain], SepTokenizer(), samples=1, length=5)
    assert sep.token_ids.tolist() == [1, 2, 7, 3, 4]
    (bare,) = sample_windows([domain], BareTokenizer(), samples=1, length=6)
    assert bare.token_ids.tolist() == [1, 2, 5, 5, 3, 4]


# --- the demo ------------------------------------------------------------------------------


def test_demo_has_four_licensed_domains_that_sample_with_the_shipped_tokenizer():
    domains = open_sources(["demo"])
    assert [d.name for d in domains] == ["prose", "code", "math", "docs"] == list(DEMO_DOMAINS)
    description = corpus_description(domains)
    assert json.loads(json.dumps(description)) == description
    assert all(d["kind"] == "demo" and d["license"] for d in description["domains"])
    tokenizer = demo_tokenizer()
    assert len(tokenizer) == 4096 and tokenizer.eos_token == "<|endoftext|>"
    samples = list(sample_windows(domains, tokenizer, samples=2, length=256, seed=0))
    assert [s.key for s in samples][::2] == ["prose/0", "code/0", "math/0", "docs/0"]
    assert all(s.token_ids.shape == (256,) and s.token_ids.max() < 4096 for s in samples)
    for domain in domains:  # every window decodes to pieces of the domain's own documents
        text = "\0".join(domain.texts())
        for sample in (s for s in samples if s.domain == domain.name):
            for piece in tokenizer.decode(sample.token_ids).split(tokenizer.eos_token):
                assert piece[2:-2] in text  # edges may split a multi-byte character


def test_demo_domain_can_be_picked_and_renamed():
    (math,) = open_sources(["latex=demo:math"])
    assert math.name == "latex" and math.description["spec"] == "demo:math"
    assert next(math.texts()).startswith("\\documentclass")
    with pytest.raises(ExpertcacheError, match="NAME=demo:DOMAIN"):
        open_sources(["all=demo"])


def test_demo_tokenizer_round_trips_text_of_every_domain():
    tokenizer = demo_tokenizer()
    for domain in open_sources(["demo"]):
        text = next(domain.texts())[:2000]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert len(ids) < len(text) / 1.8  # the BPE merges learned something for every domain


def test_prose_ships_with_the_package_as_plain_text():
    (prose,) = open_sources(["demo:prose"])
    plays = list(prose.texts())
    assert [play.splitlines()[0] for play in plays] == ["A Midsummer Night's Dream", "Macbeth", "The Tempest"]
    assert 250_000 < sum(map(len, plays)) < 400_000
    assert not any(mark in play for play in plays for mark in ("**", "_", "#"))  # no markdown left
