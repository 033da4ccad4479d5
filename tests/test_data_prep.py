"""Tests for data_prep: demo corpus -> tokenizer -> packed MDS tokens -> read back.

Real libraries (sentencepiece, mosaicml-streaming, zstandard, pyarrow) on tiny real data.
Expectations are computed independently of the implementation where possible (own JSONL
reading, own EOS packing); the split rule is the one ``data_prep.split.split_of`` the workers
use, pinned to the manifest contract by known hash values (``test_split_rule_is_the_contract``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import zstandard

from data_prep.__main__ import main
from data_prep.errors import DataPrepError
from data_prep.split import split_of
from pretrain import faults

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 64
VOCAB = 1024
VAL_FRACTION = 0.2

# Texts that are easy to get wrong: indentation, tabs, CRLF, blank lines, non-BMP characters,
# CJK, NUL, non-breaking and zero-width spaces, leading/trailing whitespace, digits.
TRICKY = [
    "def f(x):\n    if x:\n\treturn 1\n\n\n    return 0\n",
    "  leading spaces and trailing  \n\n",
    "windows\r\nline endings\r\n",
    "emoji \U0001F600\U0001F980, CJK \u6f22\u5b57\u304b\u306a, accents na\u00efve caf\u00e9, NUL \x00 end",
    "nbsp\u00a0zero\u200bwidth\ufeffbom",
    "\n\nstarts with newlines",
    "digits 1234567890 3.14159 0xDEADBEEF",
]
LONG_DOC = "A long document about packing samples. " * 300


# --------------------------------------------------------------------------------------------
# helpers (independent of the implementation)


def read_jsonl_zst(path: Path) -> list[dict]:
    data = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 30)
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


RUN_FIELDS = ("wall_time_s", "tokens_per_s", "run")  # differ between runs of the same dataset


def dataset_snapshot(d: Path) -> dict:
    """Every published file's sha256 (manifest: its content less the per-run fields)."""
    snap = {k: v for k, v in tree_hashes(d).items()
            if k != "manifest.json" and k != ".lock" and not k.startswith(".work/")}
    m = json.loads((d / "manifest.json").read_text())
    snap["manifest.json"] = {k: v for k, v in m.items() if k not in RUN_FIELDS}
    return snap


def load_sp(path: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def tokenize_args(inputs, out, tok, seq_len=SEQ_LEN, *extra: str) -> list[str]:
    return ["-q", "tokenize", "--input", *map(str, inputs), "--output", str(out),
            "--tokenizer", str(tok), "--seq-len", str(seq_len), *extra]


def write_jsonl(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# fixtures (module scoped: built once)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    assert main(["-q", "demo-corpus", "--output", str(out), "--max-mb", "1", "--docs-per-file", "64"]) == 0
    return out


@pytest.fixture(scope="module")
def corpus_files(corpus) -> list[Path]:
    return sorted((corpus / "train").rglob("*.jsonl.zst"), key=str)


@pytest.fixture(scope="module")
def corpus_docs(corpus_files) -> list[dict]:
    return [rec for f in corpus_files for rec in read_jsonl_zst(f)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok.model"
    assert main(["-q", "train-tokenizer", "--input", str(corpus), "--output", str(out),
                 "--vocab-size", str(VOCAB)]) == 0
    return out


@pytest.fixture(scope="module")
def extra_inputs(tmp_path_factory) -> tuple[Path, list[str]]:
    """One file per other supported format; returns (dir, its texts in path order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("extra")
    write_jsonl(d / "a.jsonl", TRICKY[:3])
    (d / "b.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in TRICKY[3:5]).encode())
    )
    (d / "c.txt").write_bytes(TRICKY[5].encode("utf-8"))
    rows = [TRICKY[6], LONG_DOC, "last row"]
    pq.write_table(pa.table({"text": rows, "id": [1, 2, 3]}), d / "d.parquet", row_group_size=2)
    (d / "ignored.md").write_text("not an input format")
    return d, TRICKY + [LONG_DOC, "last row"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus, tok, extra_inputs) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    args = tokenize_args([corpus, extra_inputs[0]], out, tok, SEQ_LEN, "--val-fraction", str(VAL_FRACTION),
                         "--shard-size-limit", "16k", "--workers", "2")
    assert main(args) == 0
    return out


# --------------------------------------------------------------------------------------------
# demo corpus


def test_demo_corpus_slimpajama_layout(corpus, corpus_docs, tmp_path):
    files = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file())
    assert len(files) >= 2
    for f in files:
        assert re.fullmatch(r"train/chunk[12]/example_train_\d+\.jsonl\.zst", f), f
    assert {f.split("/")[1] for f in files} == {"chunk1", "chunk2"}
    sets: dict[str, int] = {}
    total = 0
    for rec in corpus_docs:
        assert set(rec) == {"text", "meta"}
        assert isinstance(rec["text"], str) and rec["text"].strip()
        name = rec["meta"]["redpajama_set_name"]
        sets[name] = sets.get(name, 0) + 1
        total += len(rec["text"].encode("utf-8"))
    assert set(sets) == {"RedPajamaGitHub", "RedPajamaBook"}, sets
    assert 0.5e6 < total <= 1e6  # --max-mb 1
    github = [r["text"] for r in corpus_docs if r["meta"]["redpajama_set_name"] == "RedPajamaGitHub"]
    assert all(t.startswith("# module ") for t in github)
    assert any(re.search(r"^## (class|def) \w+(\.\w+)+$", t, re.M) for t in github)
    assert len({r["text"] for r in corpus_docs}) == len(corpus_docs)

    # deterministic: a second run writes byte-identical files
    again = tmp_path / "again"
    assert main(["-q", "demo-corpus", "--output", str(again), "--max-mb", "1", "--docs-per-file", "64"]) == 0
    assert tree_hashes(again) == tree_hashes(corpus)


def test_demo_corpus_parses_without_importing():
    import sysconfig

    from data_prep.corpus import module_document, pydoc_topics, stdlib_sources

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert "antigravity" not in sys.modules  # importing it would open a web browser
    doc = module_document("antigravity", stdlib / "antigravity.py")
    assert doc is not None and doc.startswith("# module antigravity") and "## def antigravity.geohash" in doc
    assert "antigravity" not in sys.modules
    topics = pydoc_topics(stdlib)
    assert "assert" in topics and "assert_stmt" in topics["assert"]
    names = [m for m, _ in stdlib_sources(stdlib)]
    assert "json.decoder" in names and "asyncio" in names
    assert not [m for m in names if re.search(r"(^|\.)(tests?|idle_test|site-packages)(\.|$)", m)]


def _fake_dist(site: Path, name: str, version: str, files: dict[str, bytes], description: str) -> None:
    """Install a fake distribution: its files, METADATA (long description as the body) and RECORD."""
    info = f"{name}-{version}.dist-info"
    files = {**files,
             f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                  f"Summary: fake {name}\n\n{description}").encode(),
             f"{info}/top_level.txt": f"{name}\n".encode(),
             f"{info}/entry_points.txt": b"[console_scripts]\nentry points are not documentation\n"}
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    record = "".join(f"{rel},,\n" for rel in [*files, "../../../bin/outside"]) + f"{info}/RECORD,,\n"
    (site / info / "RECORD").write_text(record)


SHARED_DOC = "Shared helper: vendored copies of it must appear once in the corpus."
CORE_PY = (
    '"""Core of foo: the module docstring."""\n\n\n'
    f'def helper():\n    """{SHARED_DOC}"""\n\n\n'
    'class Engine:\n    """An engine that runs things."""\n\n'
    '    def run(self):\n        """Run the engine once."""\n'
).encode()
README = "# Foo\n\nFoo is a library for demonstrating documentation extraction in the corpus tests.\n"
LONG_DESCRIPTION = "Foo: a long description in the METADATA body.\n\nIt has two paragraphs of prose.\n"


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory) -> Path:
    """Two fake distributions; bar vendors foo's code and repeats its docs with other whitespace."""
    site = tmp_path_factory.mktemp("site-packages")
    _fake_dist(site, "foo", "1.0", {
        "foo/__init__.py": b'"""Foo package docstring, unique to foo."""\n',
        "foo/core.py": CORE_PY,
        "foo/tests/test_core.py": b'"""TESTS-DIR docstring must be skipped."""\n',
        "foo/test_inline.py": b'"""TEST-FILE docstring must be skipped."""\n',
        "foo/conftest.py": b'"""CONFTEST docstring must be skipped."""\n',
        "foo/README.md": README.encode(),
        "foo/LICENSE.txt": b"LICENSE-TEXT Permission is hereby granted, free of charge, to any person\n",
        "foo/table.txt": b"1.0 2.0 3.0\n4.5 6.25 7e-3\n" * 20,  # numeric data, not prose
        "foo/latin1.rst": "caf\xe9 LATIN1-TEXT is not utf-8".encode("latin-1"),
        "foo/huge.md": b"HUGE-DOC words " * 80_000,  # > 1 MB
        "foo/broken.py": b"def broken(:\n    '''SYNTAX-ERROR docstring'''\n",
        # sentencepiece's meta space (it decodes to " "): no sentencepiece model round-trips it
        "foo/spm.py": ('def a():\n    """META-SPACE: replace " " with "\u2581"."""\n\n\n'
                       'def b():\n    """Kept next to the meta space."""\n').encode(),
        "foo/SPM.md": "META-SPACE-DOC: sentencepiece pieces start with \u2581.\n".encode(),
    }, LONG_DESCRIPTION)
    _fake_dist(site, "bar", "2.0", {
        "bar/__init__.py": b'"""Bar package docstring."""\n\n\ndef own():\n    """Only bar has this docstring."""\n',
        "bar/_vendor/foo_core.py": CORE_PY,  # an exact vendored copy: every docstring is a repeat
        "bar/_vendor/foo_helper.py": (f'def helper():\n    """{SHARED_DOC}"""\n\n\n'
                                      'def extra():\n    """Bar\'s own extra helper."""\n').encode(),
        "bar/docs/README.rst": ("\n  " + README.replace(" ", "  ").replace("\n\n", "\n \n")).encode(),
    }, LONG_DESCRIPTION.replace("two", "two\n  "))  # foo's, up to whitespace
    return site


def corpus_records(root: Path) -> list[dict]:
    """All records in document order (files are dealt round-robin: chunk1/_0, chunk2/_0, chunk1/_1, ...)."""
    def order(f: Path) -> tuple[int, int]:
        return int(re.search(r"(\d+)\.jsonl\.zst$", f.name).group(1)), int(f.parent.name[len("chunk"):])

    return [rec for f in sorted((root / "train").rglob("*.jsonl.zst"), key=order) for rec in read_jsonl_zst(f)]


def test_demo_corpus_packages_source(fake_site, tmp_path, capsys):
    from data_prep.corpus import DemoCorpusConfig, build_demo_corpus

    out = tmp_path / "pk"
    assert main(["demo-corpus", "--sources", "packages", "--site-packages", str(fake_site),
                 "--output", str(out), "--docs-per-file", "2"]) == 0
    printed = capsys.readouterr().out
    assert "packages: 2 installed distributions read" in printed and "dedup removed" in printed
    recs = corpus_records(out)
    texts = [r["text"] for r in recs]
    by_set: dict[str, list[str]] = {}
    for r in recs:
        assert set(r) == {"text", "meta"} and r["text"].endswith("\n")
        by_set.setdefault(r["meta"]["redpajama_set_name"], []).append(r["text"])
    github, book = by_set.pop("RedPajamaGitHub"), by_set.pop("RedPajamaBook")
    assert not by_set
    assert all(t.startswith("# module ") for t in github)
    modules = {t.split("\n", 1)[0][len("# module "):] for t in github}
    # foo/core.py and bar/_vendor/foo_core.py are identical: exactly one of them survives
    assert len({"foo.core", "bar._vendor.foo_core"} & modules) == 1
    assert {"foo", "bar", "bar._vendor.foo_helper", "foo.spm"} <= modules
    # every docstring appears exactly once in the whole corpus (first copy kept)
    joined = "".join(texts)
    for doc in (SHARED_DOC, "Core of foo: the module docstring.", "An engine that runs things.",
                "Run the engine once.", "Bar's own extra helper.", "Only bar has this docstring.",
                "Kept next to the meta space."):
        assert joined.count(doc) == 1, doc
    # skipped: tests, non-UTF-8, numeric tables, licenses, > 1 MB files, dist-info files, unparsable code
    for absent in ("TESTS-DIR", "TEST-FILE", "CONFTEST", "LATIN1-TEXT", "LICENSE-TEXT", "HUGE-DOC", "6.25",
                   "entry points", "SYNTAX-ERROR", "Summary:", "META-SPACE", "\u2581"):
        assert absent not in joined, absent
    # docs: one README and one long description (the copies differ only in whitespace)
    assert sum("Foo is a library" in " ".join(t.split()) for t in book) == 1
    assert sum("two paragraphs" in " ".join(t.split()) for t in book) == 1
    assert len(book) == 2 and len(texts) == len(set(texts))

    # the API: deterministic, byte for byte; what dedup removed: a README copy, a METADATA copy,
    # the repeated docstrings, the vendored module left with none of its own
    res = build_demo_corpus(DemoCorpusConfig(output=tmp_path / "api", sources=("packages",),
                                             site_packages=(fake_site,), docs_per_file=2))
    assert tree_hashes(tmp_path / "api") == tree_hashes(out)
    assert res.by_source == {"RedPajamaBook": 2, "RedPajamaGitHub": len(github)} and res.distributions == 2
    assert sum(res.bytes_by_source.values()) == res.text_bytes == len(joined.encode())
    st = res.dedup
    assert st is not None and (st.documents, st.emptied) == (2, 1) and st.docstrings == 5, st
    assert res.capped == {}

    # --max-mb: a prefix of the same document order (dedup included)
    capped = build_demo_corpus(DemoCorpusConfig(output=tmp_path / "cap", sources=("packages",),
                                                site_packages=(fake_site,), max_mb=res.text_bytes * 0.6 / 1e6))
    capped_texts = [r["text"] for r in corpus_records(tmp_path / "cap")]
    assert 0 < len(capped_texts) < len(texts) and capped_texts == texts[:len(capped_texts)]
    assert capped.text_bytes <= res.text_bytes * 0.6
    # --max-mb-per-dist: a distribution stops contributing at its cap
    small = build_demo_corpus(DemoCorpusConfig(output=tmp_path / "dist", sources=("packages",),
                                               site_packages=(fake_site,), max_mb_per_dist=150e-6))
    assert set(small.capped) == {"foo", "bar"} and all(v <= 150 for v in small.capped.values())
    assert small.text_bytes < res.text_bytes


def test_demo_corpus_sources_option(fake_site, tmp_path, capsys):
    # the default is --sources stdlib: no packages, no dedup (the demo corpus is unchanged)
    a, b = tmp_path / "default", tmp_path / "stdlib"
    assert main(["demo-corpus", "--output", str(a), "--max-mb", "0.3"]) == 0
    assert main(["demo-corpus", "--output", str(b), "--max-mb", "0.3", "--sources", "stdlib",
                 "--site-packages", str(fake_site)]) == 0
    printed = capsys.readouterr().out
    assert "dedup" not in printed and "packages:" not in printed
    assert tree_hashes(a) == tree_hashes(b)
    # both sources: stdlib and package documents in one corpus, deduplicated together
    c = tmp_path / "both"
    assert main(["-q", "demo-corpus", "--output", str(c), "--sources", "packages,stdlib",
                 "--site-packages", str(fake_site)]) == 0
    texts = [r["text"] for r in corpus_records(c)]
    assert any(t.startswith("# module json\n") for t in texts) and any(SHARED_DOC in t for t in texts)
    assert len(texts) == len(set(texts)) and "dedup removed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["-q", "demo-corpus", "--output", str(c), "--sources", "stdlib,nope"])
    capsys.readouterr()
    assert main(["-q", "demo-corpus", "--output", str(c), "--sources", "packages",
                 "--site-packages", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_round_trip_exact(tok, corpus_docs):
    sp = load_sp(tok)
    assert sp.vocab_size() == VOCAB
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    texts = [r["text"] for r in corpus_docs] + TRICKY
    assert any("\n        " in t for t in texts)  # real docstrings with code indentation
    for text in texts:
        assert sp.decode(sp.encode(text)) == text
    newline = sp.piece_to_id("\n")
    assert newline != sp.unk_id() and sp.encode("\n") == [newline]
    assert sp.encode("a\nb").count(newline) == 1
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]  # split_digits
    assert sp.unk_id() not in sp.encode("\U0001F980 \u0915\u094D\u0937")  # byte fallback


def test_tokenizer_training_is_deterministic(tok, corpus, tmp_path):
    out = tmp_path / "again.model"
    assert main(["-q", "train-tokenizer", "--input", str(corpus), "--output", str(out),
                 "--vocab-size", str(VOCAB)]) == 0
    assert out.read_bytes() == tok.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.model"]  # no temp files left behind


def test_tokenizer_rejects_too_small_vocab(corpus, tmp_path, capsys):
    assert main(["-q", "train-tokenizer", "--input", str(corpus), "--output", str(tmp_path / "t.model"),
                 "--vocab-size", "100"]) == 2
    assert "--vocab-size 100" in capsys.readouterr().err
    assert not (tmp_path / "t.model").exists()


# --------------------------------------------------------------------------------------------
# tokenize: data round trip


def test_data_round_trip(dataset, corpus_files, extra_inputs, tok):
    from data_prep import read_manifest, read_tokens

    m = read_manifest(dataset)
    sp = load_sp(tok)
    eos = sp.eos_id()
    L = SEQ_LEN + 1
    assert (m["seq_len"], m["sample_len"], m["dtype"], m["column"]) == (SEQ_LEN, L, "uint16", "tokens")
    assert (m["vocab_size"], m["eos_id"]) == (VOCAB, eos)
    assert m["tokenizer"]["sha256"] == hashlib.sha256(tok.read_bytes()).hexdigest()
    assert m["skipped"] == {}

    # expected documents, in the documented order: input files sorted by path
    extra_dir, extra_texts = extra_inputs
    per_file = {"a.jsonl": extra_texts[0:3], "b.jsonl.gz": extra_texts[3:5], "c.txt": extra_texts[5:6],
                "d.parquet": extra_texts[6:9]}
    files = sorted([*corpus_files, *(extra_dir / n for n in per_file)], key=str)
    docs = [t for f in files for t in (per_file.get(f.name) or [r["text"] for r in read_jsonl_zst(f)])]
    assert [i["path"] for i in m["inputs"]] == [str(f) for f in files]  # ignored.md is not an input
    assert m["documents_read"] == len(docs)

    by_split = {"train": [], "val": []}
    for d in docs:
        by_split[split_of(d, VAL_FRACTION)].append(d)
    assert by_split["val"] and by_split["train"]

    seen_docs = []
    for split, split_docs in by_split.items():
        expected = np.array([t for d in split_docs for t in sp.encode(d) + [eos]], dtype=np.int64)
        samples = list(read_tokens(dataset, split, verify=True))
        info = m["splits"][split]
        assert len(samples) == info["samples"] == len(expected) // L
        assert all(s.shape == (L,) and s.dtype == np.uint16 for s in samples)
        got = np.concatenate(samples).astype(np.int64)
        assert np.array_equal(got, expected[: len(got)])
        assert info["tokens"] == len(expected)
        assert info["dropped_tail_tokens"] == len(expected) - len(got) < L
        assert info["documents"] == len(split_docs)
        # decode: EOS-separated pieces are exactly the split's documents (last one may be cut)
        pieces = np.split(got, np.flatnonzero(got == eos) + 1)
        complete = [sp.decode(p[:-1].tolist()) for p in pieces if len(p) and p[-1] == eos]
        assert complete == split_docs[: len(complete)]
        # ... and only documents that reach past the last full sample are missing
        n_complete = sum(len(sp.encode(d)) + 1 for d in complete)
        assert n_complete <= len(got)
        if len(complete) < len(split_docs):
            assert n_complete + len(sp.encode(split_docs[len(complete)])) + 1 > len(got)
        seen_docs += complete
    # every complete document is in exactly one split
    assert sorted(seen_docs) == sorted(d for d in docs if d in set(seen_docs))
    assert not set(by_split["train"]) & set(by_split["val"])
    assert any(len(sp.encode(d)) > 3 * L for d in seen_docs)  # documents spanning several samples
    # multiple shards were written (--shard-size-limit 16k)
    assert len(json.loads((dataset / "train" / "index.json").read_text())["shards"]) > 1


def test_rerun_is_byte_identical(dataset, corpus, extra_inputs, tok, tmp_path, caplog):
    def split_hashes(d):
        return tree_hashes(d / "train") | {f"val/{k}": v for k, v in tree_hashes(d / "val").items()}

    before = split_hashes(dataset)
    manifest_before = (dataset / "manifest.json").read_bytes()
    args = ["--val-fraction", str(VAL_FRACTION), "--shard-size-limit", "16k"]
    # the same command again: the dataset is complete, nothing is rewritten
    with caplog.at_level(logging.INFO, logger="data_prep"):
        assert main(tokenize_args([corpus, extra_inputs[0]], dataset, tok, SEQ_LEN, *args, "--workers", "1")) == 0
    assert "nothing to do" in caplog.text
    assert (dataset / "manifest.json").read_bytes() == manifest_before
    # --overwrite rebuilds it in place, with another number of workers: byte-identical
    assert main(tokenize_args([corpus, extra_inputs[0]], dataset, tok, SEQ_LEN, *args, "--workers", "1",
                              "--overwrite")) == 0
    assert split_hashes(dataset) == before
    # and into a fresh directory
    other = tmp_path / "other"
    assert main(tokenize_args([corpus, extra_inputs[0]], other, tok, SEQ_LEN, *args)) == 0
    assert split_hashes(other) == before
    assert sorted(p.name for p in other.iterdir()) == [".lock", "manifest.json", "skipped.jsonl", "train", "val"]
    assert dataset_snapshot(other) == dataset_snapshot(dataset)


def test_streaming_dataset_reads_back(dataset, tmp_path):
    import shutil

    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    from data_prep import read_manifest, read_tokens

    m = read_manifest(dataset)
    clean_stale_shared_memory()
    for split in ("train", "val"):
        # StreamingDataset decompresses shards next to the index and keys shared memory by
        # the local path: give it its own unique copy.
        local = tmp_path / f"{split}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(dataset / split, local)
        ds = StreamingDataset(local=str(local), shuffle=False, batch_size=1)
        assert len(ds) == m["splits"][split]["samples"] > 0
        first = ds[0]["tokens"]
        assert first.shape == (SEQ_LEN + 1,) and first.dtype == np.uint16
        ours = list(read_tokens(dataset, split))
        theirs = [s["tokens"] for s in ds]
        assert len(theirs) == len(ours)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
        del ds


def test_token_counts(dataset):
    from data_prep import read_tokens, token_counts

    counts = token_counts(dataset, "train")
    arr = np.concatenate(list(read_tokens(dataset, "train")))
    assert counts.shape == (VOCAB,) and counts.sum() == arr.size
    assert np.array_equal(counts, np.bincount(arr, minlength=VOCAB))


# --------------------------------------------------------------------------------------------
# bad records, refusing other datasets, atomicity


def test_refuses_different_existing_dataset(tmp_path, tok):
    from data_prep import read_manifest, read_tokens

    inp = write_jsonl(tmp_path / "docs.jsonl", [f"document number {i}\n  indented line" for i in range(50)])
    out = tmp_path / "out"
    assert main(tokenize_args([inp], out, tok, 16)) == 0
    before = tree_hashes(out)

    with pytest.raises(DataPrepError, match=r"seq_len.*--overwrite"):
        from data_prep.pipeline import TokenizeConfig, run_tokenize

        run_tokenize(TokenizeConfig(inputs=[str(inp)], output=out, tokenizer=tok, seq_len=32, progress=False))
    # the CLI reports it as an error naming the setting, exit status 2, nothing changed
    proc = run_cli(*tokenize_args([inp], out, tok, 32))
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and "seq_len: existing 16, requested 32" in proc.stderr
    assert tree_hashes(out) == before

    # different input content is a different dataset too
    write_jsonl(tmp_path / "docs.jsonl", ["changed"] * 50)
    assert main(tokenize_args([inp], out, tok, 16)) == 2
    assert tree_hashes(out) == before

    assert main(tokenize_args([inp], out, tok, 32, "--overwrite")) == 0
    m = read_manifest(out)
    assert m["seq_len"] == 32 and next(read_tokens(out, "train")).shape == (33,)

    # a non-empty directory that is not a dataset is refused as well
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    assert main(tokenize_args([inp], junk, tok, 16)) == 2
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]


def test_concurrent_run_is_refused(tmp_path, tok):
    from data_prep.writer import exclusive_lock

    inp = write_jsonl(tmp_path / "docs.jsonl", ["some text"] * 10)
    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out):  # another process holds the output directory
        proc = run_cli(*tokenize_args([inp], out, tok, 4))
    assert proc.returncode == 2 and "being written by another process" in proc.stderr
    assert main(tokenize_args([inp], out, tok, 4)) == 0


def test_failed_run_leaves_previous_dataset_intact(tmp_path, tok, monkeypatch, caplog):
    from data_prep import read_manifest

    inp = write_jsonl(tmp_path / "docs.jsonl", [f"text {i} " * 20 for i in range(40)])
    out = tmp_path / "out"
    assert main(tokenize_args([inp], out, tok, 8)) == 0
    before = tree_hashes(out)
    snapshot = dataset_snapshot(out)

    # a worker fails mid-unit (e.g. disk full), after it has written shards of its part
    monkeypatch.setenv(faults.ENV, faults.arm({"data_prep.units": {"fail_unit": 0, "flush_tokens": 64}})[faults.ENV])
    with caplog.at_level(logging.ERROR, logger="data_prep"):
        assert main(tokenize_args([inp], out, tok, 16, "--overwrite", "--shard-size-limit", "1k")) == 2
    assert "simulated failure in unit 0" in caplog.text  # the worker's traceback is logged
    after = tree_hashes(out)
    assert {k: v for k, v in after.items() if not k.startswith(".work/")} == before  # old dataset untouched
    assert read_manifest(out)["seq_len"] == 8

    fresh = tmp_path / "fresh"
    assert main(tokenize_args([inp], fresh, tok, 8)) == 2
    assert sorted(p.name for p in fresh.iterdir()) == [".lock", ".work"]  # nothing published, no manifest
    monkeypatch.delenv(faults.ENV)
    assert main(tokenize_args([inp], fresh, tok, 8)) == 0  # the same command again finishes the job
    assert dataset_snapshot(fresh) == snapshot


# --------------------------------------------------------------------------------------------
# small units


def test_read_manifest_errors(tmp_path, dataset):
    from data_prep import read_manifest

    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "manifest.json"))):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "manifest.json"))):
        read_manifest(tmp_path)
    good = json.loads((dataset / "manifest.json").read_text())
    broken = dict(good, sample_len=good["seq_len"])
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="sample_len"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({k: v for k, v in good.items() if k != "eos_id"}))
    with pytest.raises(ValueError, match="eos_id"):
        read_manifest(tmp_path)


class _Rows:
    """A writer for a Packer that keeps the rows it is handed (a PartWriter writes them to MDS)."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []
        self.calls = 0

    def write_rows(self, rows: np.ndarray) -> None:
        assert rows.ndim == 2 and rows.flags.c_contiguous
        self.calls += 1
        self.rows += rows.tolist()


def test_packer_cuts_exact_samples():
    from data_prep.pack import Packer, token_dtype

    out = _Rows()
    p = Packer(out, "uint16", sample_len=4, eos_id=0)
    assert p.add([1, 2]) == 3 and p.add([3]) == 2
    assert out.rows == []  # nothing packed before a flush (flush_tokens not reached)
    p.flush()
    assert out.rows == [[1, 2, 0, 3]]
    p.add([4, 5, 6, 7, 8])
    p.flush()
    assert out.rows == [[1, 2, 0, 3], [0, 4, 5, 6]]
    assert (p.documents, p.tokens, p.samples, p.dropped_tail_tokens) == (3, 11, 2, 3)
    assert token_dtype(65536) == "uint16" and token_dtype(65537) == "uint32"

    # where the flushes happen (flush_tokens) does not change the rows, only when they are written
    docs = [list(range(1, 1 + n)) for n in (5, 1, 9, 2, 7, 3, 11, 4)]
    expected = [t for d in docs for t in [*d, 0]]
    for flush_tokens in (1, 3, 10, 1 << 18):
        out = _Rows()
        p = Packer(out, np.uint16, sample_len=5, eos_id=0, flush_tokens=flush_tokens)
        for d in docs:
            p.add(list(d))
        p.flush()
        k = len(expected) // 5
        assert out.rows == [expected[i * 5:(i + 1) * 5] for i in range(k)]
        assert p.samples == k and p.dropped_tail_tokens == len(expected) - 5 * k
        assert out.calls == 1 if flush_tokens > len(expected) else out.calls > 1
    with pytest.raises(ValueError, match="sample_len"):
        Packer(_Rows(), "uint16", sample_len=1, eos_id=0)


def test_split_rule_is_the_contract():
    """split_of (what the workers use) against known blake2b values of the rule recorded in the
    manifest: h = blake2b(utf8(text), digest_size=8) as big-endian uint64; val iff h / 2**64 < f."""
    from data_prep.split import SPLIT_HASH

    assert SPLIT_HASH == "blake2b(utf8(text), digest_size=8) as big-endian uint64 / 2**64 < val_fraction -> val"
    known = {
        "": 16476032584258269876,
        "hello": 12085107955937391741,
        TRICKY[3]: 14605813687436565388,
        LONG_DOC: 5139054864388555340,
    }
    for text, h in known.items():
        at = h / 2**64
        assert split_of(text, at) == "train" and split_of(text, float(np.nextafter(at, 1.0))) == "val"
        assert split_of(text.encode("utf-8"), at) == "train"  # the UTF-8 bytes: the same rule
        assert split_of(text, 0.0) == "train" and split_of(text, 0.999999) == "val"


def test_mds_column_encoding_is_valid():
    from streaming.base.format.mds.encodings import get_mds_encoded_size, is_mds_encoding

    from data_prep.writer import column_encoding

    for dtype, itemsize in (("uint16", 2), ("uint32", 4)):
        enc = column_encoding(dtype, 257)
        assert is_mds_encoding(enc) and get_mds_encoded_size(enc) == 257 * itemsize


def test_input_resolution_errors(tmp_path):
    from data_prep.readers import resolve_inputs

    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataPrepError, match=r"--input .*x\.csv: unsupported file type"):
        resolve_inputs([str(tmp_path / "x.csv")])
    with pytest.raises(DataPrepError, match=r"--input .*missing\.jsonl: no such file"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(DataPrepError, match="glob matched no files"):
        resolve_inputs([str(tmp_path / "*.jsonl")])
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "b.jsonl", ["b"])
    write_jsonl(tmp_path / "a.jsonl", ["a"])
    got = resolve_inputs([str(tmp_path / "**" / "*.jsonl"), str(tmp_path)])
    assert got == [tmp_path / "a.jsonl", tmp_path / "sub" / "b.jsonl"]  # sorted, de-duplicated


def test_cli_help_and_import_is_light():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "demo-corpus" in proc.stdout and "tokenize" in proc.stdout
    code = "import sys, data_prep; print(sorted(m for m in ('torch','streaming','sentencepiece','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_fast_row_writing_matches_mdswriter(tmp_path):
    """PartWriter hands rows to MDSWriter in bulk: same shards and index as MDSWriter.write."""
    from streaming import MDSWriter

    from data_prep.writer import COLUMN, PartWriter, column_encoding

    rows = np.random.default_rng(0).integers(0, 1000, size=(50, 17)).astype(np.uint16)
    for compression in (None, "zstd"):
        ref = tmp_path / f"ref-{compression}"
        with MDSWriter(out=str(ref), columns={COLUMN: column_encoding("uint16", 17)}, compression=compression,
                       hashes=["sha1"], size_limit=300) as w:
            for r in rows:
                w.write({COLUMN: r})
        pw = PartWriter(tmp_path / f"ours-{compression}", 17, "uint16", compression, 300)
        pw.write_rows(rows[:7])
        pw.write_rows(rows[7:])
        pw.finish()
        assert tree_hashes(pw.out) == tree_hashes(ref) and len(tree_hashes(ref)) > 3
