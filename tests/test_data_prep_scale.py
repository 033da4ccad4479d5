"""data_prep at scale (issue #3): SlimPajama / UltraTextbooks layouts, work units, per-source
output, every bad-record kind, --strict, worker-count independence, resume after a real kill -9,
bounded tokenizer sampling, existing (Llama-style) tokenizer models.

Real libraries (sentencepiece, mosaicml-streaming, zstandard, pyarrow) on tiny real text (the
stdlib-docstring demo corpus). Expectations are computed independently of the implementation
where possible: our own JSONL/parquet reading and packing rule; the split rule is the workers'
own ``data_prep.split.split_of`` (pinned to the manifest contract in test_data_prep.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from data_prep.__main__ import main
from data_prep.split import split_of
from pretrain import faults

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["RedPajamaArXiv", "RedPajamaBook", "RedPajamaC4", "RedPajamaCommonCrawl", "RedPajamaGitHub",
           "RedPajamaStackExchange", "RedPajamaWikipedia"]
VOCAB = 512
SEQ = 32
L = SEQ + 1
RUN_FIELDS = ("wall_time_s", "tokens_per_s", "run")


# --------------------------------------------------------------------------------------------
# helpers (independent of the implementation)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(d: Path) -> dict:
    """Published files' sha256 plus the manifest less its per-run fields."""
    snap = {k: v for k, v in tree_hashes(d).items()
            if k not in ("manifest.json", ".lock") and not k.startswith(".work/")}
    m = json.loads((d / "manifest.json").read_text())
    snap["manifest.json"] = {k: v for k, v in m.items() if k not in RUN_FIELDS}
    return snap


def read_zst_jsonl(path: Path) -> list[dict]:
    data = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 30)
    return [json.loads(x) for x in data.decode("utf-8").splitlines()]


def pack(token_lists, eos: int) -> tuple[np.ndarray, int]:
    """Documents + EOS, concatenated and cut into rows of L; returns (rows, dropped tail)."""
    flat = np.array([t for ids in token_lists for t in [*ids, eos]], dtype=np.int64)
    k = len(flat) // L
    return flat[: k * L].reshape(k, L), len(flat) - k * L


def load_sp(path: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def tok_args(inputs, out, tok, *extra) -> list[str]:
    return ["-q", "tokenize", "--input", *map(str, inputs), "--output", str(out), "--tokenizer", str(tok),
            "--seq-len", str(SEQ), *extra]


def samples(d: Path, split: str, source=None) -> np.ndarray:
    from data_prep import read_tokens

    rows = list(read_tokens(d, split, source=source, verify=True))
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, L), np.int64)


def read_mds(d: Path, dtype=np.uint16) -> np.ndarray:
    """Rows of an MDS dataset directory of fixed-size token samples (our own minimal reader)."""
    rows = []
    for shard in json.loads((d / "index.json").read_text())["shards"]:
        z = shard.get("zip_data")
        data = (d / (z or shard["raw_data"])["basename"]).read_bytes()
        if z:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
        n = int(np.frombuffer(data, np.uint32, count=1)[0])
        begin = int(np.frombuffer(data, np.uint32, count=1, offset=4)[0])
        rows.append(np.frombuffer(data, dtype, count=n * L, offset=begin).reshape(n, L))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, L), np.int64)


def check_indexes(root: Path) -> int:
    """Every index.json under root references complete shard files (size + sha1); returns #indexes."""
    n = 0
    for index in root.rglob("index.json"):
        n += 1
        for shard in json.loads(index.read_text())["shards"]:
            for key in ("raw_data", "zip_data"):
                info = shard.get(key)
                if not info:
                    continue
                f = index.parent / info["basename"]
                if key == "raw_data" and shard.get("zip_data"):
                    continue  # the raw form of a compressed shard is only made by readers
                data = f.read_bytes()
                assert len(data) == info["bytes"], f
                assert hashlib.sha1(data).hexdigest() == info["hashes"]["sha1"], f
    return n


# --------------------------------------------------------------------------------------------
# inputs made here: SlimPajama layout (7 sources) and UltraTextbooks layout (parquet)


def _demo_texts(n: int, max_chars: int = 2500) -> list[str]:
    import sysconfig

    from data_prep.corpus import iter_demo_documents

    out = []
    for text, _ in iter_demo_documents(sysconfig.get_paths()["stdlib"]):
        out.append(text[:max_chars] if len(text) > max_chars else text)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _demo_texts(180)


@pytest.fixture(scope="module")
def slimpajama(tmp_path_factory, texts) -> tuple[Path, list[tuple[Path, list[dict]]]]:
    """train/chunk{1,2}/example_train_K.jsonl.zst, 12 files x 15 docs, 7 sources."""
    root = tmp_path_factory.mktemp("slimpajama")
    files = []
    cctx = zstandard.ZstdCompressor(level=3)
    for k in range(12):
        recs = [{"text": t, "meta": {"redpajama_set_name": SOURCES[(k * 15 + i) % 7]}}
                for i, t in enumerate(texts[k * 15:(k + 1) * 15])]
        path = root / "train" / f"chunk{k % 2 + 1}" / f"example_train_{k // 2}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cctx.compress("".join(json.dumps(r) + "\n" for r in recs).encode()))
        files.append((path, recs))
    files.sort(key=lambda fr: str(fr[0]))
    return root, files


@pytest.fixture(scope="module")
def tok(tmp_path_factory, slimpajama) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok.model"
    assert main(["-q", "train-tokenizer", "--input", str(slimpajama[0]), "--output", str(out),
                 "--vocab-size", str(VOCAB)]) == 0
    return out


def write_ultratextbooks(d: Path, texts: list[str], files: int = 2, row_group_size: int = 8) -> list[dict]:
    """Parquet files with `text` and other columns (source, id), several row groups each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    rows = [{"text": t, "source": ["textbook-a", "textbook-b", "code"][i % 3], "id": i} for i, t in enumerate(texts)]
    per = -(-len(rows) // files)
    for k in range(files):
        part = rows[k * per:(k + 1) * per]
        pq.write_table(pa.Table.from_pylist(part), d / f"train-{k:05d}-of-{files:05d}.parquet",
                       row_group_size=row_group_size)
    return rows


# --------------------------------------------------------------------------------------------
# work units


def test_plan_units_rules(tmp_path, texts):
    import pyarrow.parquet as pq

    from data_prep.units import auto_unit_size, plan_units

    small = [tmp_path / f"s{i}.jsonl.zst" for i in range(3)]
    for f in small:
        f.write_bytes(b"x" * 1500)
    big = tmp_path / "t_big.jsonl"
    big.write_bytes(b"y" * 10000)
    rows = write_ultratextbooks(tmp_path / "pq", texts[:40], files=1, row_group_size=8)
    pqf = next((tmp_path / "pq").glob("*.parquet"))
    broken = tmp_path / "u_broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    files = [*small, big, pqf, broken]
    sizes = [f.stat().st_size for f in files]
    units = plan_units(files, sizes, 4096)
    # small files are grouped until a unit holds >= 4096 bytes; the big .jsonl is cut into byte
    # ranges of 4096; parquet into runs of row groups; an unreadable parquet file is one piece
    flat = [(Path(p.path).name, p.start, p.stop) for u in units for p in u.pieces]
    assert flat[:6] == [("s0.jsonl.zst", 0, None), ("s1.jsonl.zst", 0, None), ("s2.jsonl.zst", 0, None),
                        ("t_big.jsonl", 0, 4096), ("t_big.jsonl", 4096, 8192), ("t_big.jsonl", 8192, None)]
    assert [len(u.pieces) for u in units[:3]] == [3, 1, 1]
    md = pq.ParquetFile(pqf).metadata
    pq_pieces = [p for u in units for p in u.pieces if p.path == str(pqf)]
    assert len(pq_pieces) > 1 and pq_pieces[0].start == 0
    assert [p.start for p in pq_pieces[1:]] == [p.stop for p in pq_pieces[:-1]]  # contiguous row groups
    assert sum(md.row_group(g).num_rows for g in range(md.num_row_groups)) == len(rows)
    assert [p.first_row for p in pq_pieces] == [1 + sum(md.row_group(g).num_rows for g in range(p.start))
                                                for p in pq_pieces]
    assert [(p.start, p.stop) for u in units for p in u.pieces if p.path == str(broken)] == [(0, None)]
    assert [u.index for u in units] == list(range(len(units)))
    assert plan_units(files, sizes, 4096) == units  # deterministic
    assert auto_unit_size(10) == 1 << 20 and auto_unit_size(1 << 40) == 64 << 20


def test_multi_unit_packing_and_worker_independence(tmp_path, slimpajama, tok):
    """One unit per file: each unit packs its own documents and drops its own tail; the output
    is byte-identical whatever the number of workers."""
    from data_prep import read_manifest

    root, files = slimpajama
    assert all(f.stat().st_size >= 4096 for f, _ in files)  # so that each file is one unit
    sp = load_sp(tok)
    eos = sp.eos_id()
    vf = 0.2
    outs = {}
    for workers in (1, 3):
        outs[workers] = tmp_path / f"w{workers}"
        assert main(tok_args([root], outs[workers], tok, "--val-fraction", str(vf), "--unit-size", "4k",
                             "--shard-size-limit", "2k", "--workers", str(workers))) == 0
    assert snapshot(outs[1]) == snapshot(outs[3])
    out = outs[3]
    m = read_manifest(out)
    assert m["units"] == len(files) and m["layout"] == "single" and m["run"]["workers"] == 3
    for split in ("train", "val"):
        exp_rows, dropped, docs, by_source = [], 0, 0, {}
        for _, recs in files:
            mine = [r for r in recs if split_of(r["text"], vf) == split]
            rows, tail = pack([sp.encode(r["text"]) for r in mine], eos)
            exp_rows.append(rows)
            dropped += tail
            docs += len(mine)
            for r in mine:
                src = r["meta"]["redpajama_set_name"]
                by_source[src] = by_source.get(src, 0) + 1
        expected = np.concatenate(exp_rows)
        got = samples(out, split)
        assert got.shape == expected.shape and np.array_equal(got, expected)
        info = m["splits"][split]
        assert (info["samples"], info["dropped_tail_tokens"], info["documents"]) == (len(expected), dropped, docs)
        assert info["tokens"] == info["samples"] * L + info["dropped_tail_tokens"]
        # without --per-source the manifest still counts documents per source
        assert {s: v["documents"] for s, v in info["sources"].items() if v["documents"]} == by_source
    index = json.loads((out / "train" / "index.json").read_text())
    assert len(index["shards"]) > len(files)  # several shards per part, all in one index
    assert index["shards"][0]["raw_data"]["basename"].startswith("part-00000/shard.00000.mds")
    assert check_indexes(out) > 1


def test_per_source_output(tmp_path, slimpajama, tok):
    """--per-source: one MDS dataset per SlimPajama source under DIR/<split>/<source>/."""
    import shutil
    import uuid

    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    from data_prep import read_manifest, token_counts

    root, files = slimpajama
    sp = load_sp(tok)
    eos = sp.eos_id()
    out = tmp_path / "ps"
    assert main(tok_args([root], out, tok, "--per-source", "--val-fraction", "0.2", "--unit-size", "16k")) == 0
    m = read_manifest(out)
    assert m["layout"] == "per-source"
    units = m["units"]
    assert 1 < units < len(files)  # several files per unit
    for split in ("train", "val"):
        info = m["splits"][split]
        assert sorted(info["sources"]) == SOURCES
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(SOURCES + ["index.json"])
        for key in ("documents", "tokens", "samples", "dropped_tail_tokens"):
            assert info[key] == sum(v[key] for v in info["sources"].values())
        all_rows = []
        for src in SOURCES:
            v = info["sources"][src]
            assert v["dir"] == f"{split}/{src}" and (out / v["dir"] / "index.json").is_file()
            rows = samples(out, split, source=src)
            assert len(rows) == v["samples"] and v["tokens"] == v["samples"] * L + v["dropped_tail_tokens"]
            all_rows.append(rows)
            # every complete document in a source's samples is a document of that source
            want = {r["text"] for _, recs in files for r in recs
                    if r["meta"]["redpajama_set_name"] == src and split_of(r["text"], 0.2) == split}
            assert v["documents"] == len(want)
            parts = sorted((out / v["dir"]).glob("part-*"))
            assert np.array_equal(np.concatenate([read_mds(p) for p in parts]) if parts else rows, rows)
            n_complete = 0
            for part in parts:  # each unit's part starts with a document and ends in a cut one
                flat = read_mds(part).ravel()
                pieces = np.split(flat, np.flatnonzero(flat == eos) + 1)[:-1]
                assert all(sp.decode(p[:-1].tolist()) in want for p in pieces)
                n_complete += len(pieces)
            assert n_complete > 0 or v["samples"] < 3
        # the split's top-level index covers all sources, in sorted order
        assert np.array_equal(samples(out, split), np.concatenate(all_rows))
    assert token_counts(out, "train", source="RedPajamaC4").sum() == m["splits"]["train"]["sources"]["RedPajamaC4"]["samples"] * L
    # streaming reads one source's directory as a dataset of its own (a copy: it writes next to it)
    clean_stale_shared_memory()
    local = tmp_path / f"c4-{uuid.uuid4().hex[:8]}"
    shutil.copytree(out / "train" / "RedPajamaC4", local)
    ds = StreamingDataset(local=str(local), shuffle=False, batch_size=1)
    theirs = np.stack([s["tokens"] for s in ds]).astype(np.int64)
    assert np.array_equal(theirs, samples(out, "train", source="RedPajamaC4"))
    del ds


def test_ultratextbooks_parquet_and_jsonl_ranges(tmp_path, texts, tok):
    """Parquet is read by row-group pieces, plain JSONL by byte ranges: every document exactly
    once, in order, sources from a column; a bad line in a later range reports its real line."""
    from data_prep import read_manifest

    sp = load_sp(tok)
    eos = sp.eos_id()
    inp = tmp_path / "in"
    rows = write_ultratextbooks(inp / "ut", texts[:60], files=2, row_group_size=4)
    lines = [json.dumps({"text": t, "source": "jsonl"}) for t in texts[60:100]]
    bad_line = 25
    lines.insert(bad_line - 1, '{"text": broken')
    (inp / "z.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(tok_args([inp], out, tok, "--val-fraction", "0", "--unit-size", "8k", "--per-source",
                         "--source-field", "source", "--workers", "2")) == 0
    m = read_manifest(out)
    assert m["units"] >= 4
    assert m["documents_read"] == len(rows) + 40
    assert m["skipped"] == {"malformed_json": 1}
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["reason"], Path(s["path"]).name, s["line"]) for s in skipped] == [("malformed_json", "z.jsonl", bad_line)]
    tr = m["splits"]["train"]["sources"]
    assert sorted(tr) == ["code", "jsonl", "textbook-a", "textbook-b"]
    for src in sorted(tr):
        docs = ([r["text"] for r in rows if r["source"] == src] if src != "jsonl" else texts[60:100])
        got = samples(out, "train", source=src).ravel()
        assert tr[src]["documents"] == len(docs)
        # units cut the stream, but each complete document appears once, in input order
        pieces = np.split(got, np.flatnonzero(got == eos) + 1)
        complete = [sp.decode(p[:-1].tolist()) for p in pieces if len(p) and p[-1] == eos]
        decoded_in_docs = [d for d in complete if d in set(docs)]
        assert len(decoded_in_docs) >= len(complete) - tr[src]["samples"] - 1  # cut ones at part starts
        order = [docs.index(d) for d in decoded_in_docs]
        assert order == sorted(order) and len(set(order)) == len(order)


# --------------------------------------------------------------------------------------------
# bad records


def _bad_inputs(d: Path, texts: list[str]) -> dict:
    """One input of every bad-record kind, plus good documents before and after them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir()
    lines = [
        b'{"text": "good one"}',
        b'{"text": "unterminated',           # 2 malformed_json
        b'{"text": null}',                   # 3 null_text
        b'[1, 2, 3]',                        # 4 not_object
        b'{"text": "caf\xe9 latin-1"}',      # 5 invalid_utf8
        b'{"text": 42}',                     # 6 non_string_text
        b'{"title": "no text"}',             # 7 missing_text
        b'{"text": "   "}',                  # 8 empty_text
        b'{"text": "lone \\ud800 surrogate"}',  # 9 invalid_unicode
        b'',                                 # 10 blank_line
        b'{"text": "good two", "meta": {"redpajama_set_name": "RedPajamaC4"}}',
    ]
    (d / "a_bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (d / "b_latin1.txt").write_bytes(b"caf\xe9\n")  # invalid_utf8 (whole file)
    pq.write_table(pa.table({"text": ["good three", None], "n": [1, 2]}), d / "c_null.parquet")  # row 2 null_text
    pq.write_table(pa.table({"content": ["x", "y", "z"]}), d / "d_notext.parquet")  # 3 x missing_text
    (d / "e_garbage.parquet").write_bytes(b"PAR1\x00\x01garbage, not a parquet file")  # unreadable_file
    good_pq = d / "f_cut.parquet"
    pq.write_table(pa.table({"text": texts[:20]}), good_pq)
    good_pq.write_bytes(good_pq.read_bytes()[: good_pq.stat().st_size // 2])  # truncated: unreadable_file
    payload = "".join(json.dumps({"text": t}) + "\n" for t in texts[:30]).encode()
    zst = zstandard.ZstdCompressor().compress(payload)
    (d / "g_trunc.jsonl.zst").write_bytes(zst[: len(zst) // 2])  # truncated .zst: unreadable_file
    partial = zstandard.ZstdDecompressor().decompressobj().decompress(zst[: len(zst) // 2])
    gz = gzip.compress(payload)
    (d / "h_trunc.jsonl.gz").write_bytes(gz[: len(gz) // 2])  # truncated .gz: unreadable_file
    (d / "i_good.json.gz").write_bytes(gzip.compress(b'{"text": "good four"}\n'))
    return {"zst_lines": partial.count(b"\n"), "zst_line": partial.count(b"\n") + 1}


def test_every_bad_record_kind_is_counted_logged_and_skipped(tmp_path, texts, tok, caplog):
    from data_prep import read_manifest

    inp = tmp_path / "in"
    info = _bad_inputs(inp, texts)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        assert main(tok_args([inp], out, tok, "--val-fraction", "0", "--unit-size", "4k")) == 0
    m = read_manifest(out)
    assert m["skipped"] == {
        "blank_line": 1, "empty_text": 1, "invalid_unicode": 1, "invalid_utf8": 2, "malformed_json": 1,
        "missing_text": 4, "non_string_text": 1, "not_object": 1, "null_text": 2, "unreadable_file": 4,
    }
    assert m["skipped_total"] == sum(m["skipped"].values())
    # the rest of each file is still read: good lines after bad ones, the readable part of the .zst
    gz_lines = m["documents_read"] - (4 + info["zst_lines"])
    assert gz_lines >= 0
    assert m["documents_read"] == 4 + info["zst_lines"] + gz_lines
    assert m["splits"]["train"]["sources"]["RedPajamaC4"]["documents"] == 1
    recs = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    where = {(Path(r["path"]).name, r["line"], r["reason"]) for r in recs}
    bad = str(inp / "a_bad.jsonl")
    expected = {("a_bad.jsonl", 2, "malformed_json"), ("a_bad.jsonl", 3, "null_text"), ("a_bad.jsonl", 4, "not_object"),
                ("a_bad.jsonl", 5, "invalid_utf8"), ("a_bad.jsonl", 6, "non_string_text"),
                ("a_bad.jsonl", 7, "missing_text"), ("a_bad.jsonl", 8, "empty_text"),
                ("a_bad.jsonl", 9, "invalid_unicode"), ("a_bad.jsonl", 10, "blank_line"),
                ("b_latin1.txt", None, "invalid_utf8"), ("c_null.parquet", 2, "null_text"),
                ("d_notext.parquet", None, "missing_text"), ("e_garbage.parquet", None, "unreadable_file"),
                ("f_cut.parquet", None, "unreadable_file"), ("g_trunc.jsonl.zst", info["zst_line"], "unreadable_file")}
    assert expected <= where and len(recs) == len(expected) + 1  # + the truncated .gz
    assert [r for r in recs if r["path"].endswith("h_trunc.jsonl.gz")][0]["reason"] == "unreadable_file"
    log = caplog.text
    for lineno in range(2, 11):
        assert f"{bad}:{lineno}" in log
    assert f"{inp / 'g_trunc.jsonl.zst'}:{info['zst_line']}" in log and str(inp / "e_garbage.parquet") in log
    assert "skipped.jsonl" in log


def test_strict_stops_at_the_first_bad_record(tmp_path, texts, tok, capsys):
    inp = tmp_path / "in"
    _bad_inputs(inp, texts)
    out = tmp_path / "out"
    assert main(tok_args([inp], out, tok, "--unit-size", "4k", "--workers", "1", "--strict")) == 2
    err = capsys.readouterr().err
    assert f"{inp / 'a_bad.jsonl'}:2: malformed_json" in err and "--strict" in err
    assert not (out / "manifest.json").exists() and not (out / "train").exists()
    # a clean input passes --strict
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:20]))
    assert main(tok_args([good], tmp_path / "ok", tok, "--strict")) == 0


# --------------------------------------------------------------------------------------------
# resume after kill -9


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs procfs")
def test_resume_after_kill_9_is_identical(tmp_path, slimpajama, tok, caplog):
    root, files = slimpajama
    args = ["--per-source", "--val-fraction", "0.2", "--unit-size", "4k", "--shard-size-limit", "1k"]
    ref = tmp_path / "ref"
    t_ref = time.time()
    assert main(tok_args([root], ref, tok, *args, "--workers", "1")) == 0
    print(f"ref {time.time() - t_ref:.1f}s")

    out = tmp_path / "out"
    work = out / ".work"
    env = {**os.environ, **faults.arm({"data_prep.units": {"pause_s": 0.03, "flush_tokens": 200}}),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *tok_args([root], out, tok, *args, "--workers", "2")],
                            cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pgid = proc.pid
    t_start = time.time()
    try:
        deadline = time.time() + 90
        done: list[Path] = []
        while time.time() < deadline and proc.poll() is None:
            done = sorted((work / "done").glob("unit-*.json")) if (work / "done").is_dir() else []
            unfinished = [p for p in (work / "stage").glob("*/*/part-*")
                          if p.name[5:] not in {d.stem[5:][-5:] for d in done} and any(p.glob("shard.*"))] \
                if (work / "stage").is_dir() else []
            if len(done) >= 2 and unfinished:
                break
            time.sleep(0.05)
        print(f"killing after {time.time() - t_start:.1f}s with {len(done)} units done")
        assert proc.poll() is None, "the run finished before it could be killed"
        assert len(done) >= 2
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 the tokenize process only...
        proc.wait()
        deadline = time.time() + 20
        while _group_pids(pgid) and time.time() < deadline:
            time.sleep(0.1)
        assert _group_pids(pgid) == []  # ...its workers die with it (nothing writes behind a resume)
        print(f"group gone after {time.time() - t_start:.1f}s")
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # nothing half-written: no manifest, no split published, every index.json vouches for its shards
    assert not (out / "manifest.json").exists() and not (out / "train").exists()
    assert check_indexes(out) >= 2
    n_done = len(list((work / "done").glob("unit-*.json")))
    kept = {p: p.stat().st_ino for p in (work / "stage").rglob("shard.*")
            if int(p.parent.name[5:]) in {int(d.stem[5:]) for d in (work / "done").glob("unit-*.json")}}
    assert kept

    # rerun the same command (in-process, other number of workers): resumes and matches the reference
    t_res = time.time()
    with caplog.at_level(logging.INFO, logger="data_prep"):
        assert main(tok_args([root], out, tok, *args, "--workers", "2")) == 0
    print(f"resume {time.time() - t_res:.1f}s")
    assert f"resuming: {n_done} of {len(files)} units already done" in caplog.text
    assert snapshot(out) == snapshot(ref)
    from data_prep import read_manifest

    assert read_manifest(out)["run"]["units_reused"] == n_done
    # finished units were reused, not redone: their shard files are the very same inodes
    for p, ino in kept.items():
        final = out / p.relative_to(work / "stage")
        assert final.stat().st_ino == ino
    assert not work.exists()


def test_partial_run_with_other_settings_is_refused(tmp_path, slimpajama, tok, monkeypatch, capsys):
    root, _ = slimpajama
    out = tmp_path / "out"
    monkeypatch.setenv(faults.ENV, faults.arm({"data_prep.units": {"fail_unit": 3}})[faults.ENV])
    assert main(tok_args([root], out, tok, "--unit-size", "4k", "--workers", "1")) == 2
    monkeypatch.delenv(faults.ENV)
    assert (out / ".work" / "done").is_dir() and not (out / "manifest.json").exists()
    capsys.readouterr()
    assert main(tok_args([root], out, tok, "--unit-size", "8k")) == 2
    assert "unfinished run with other settings (unit_size: existing 4096, requested 8192)" in capsys.readouterr().err
    assert main(tok_args([root], out, tok, "--unit-size", "8k", "--overwrite")) == 0


def test_dead_worker_is_reported_and_the_run_resumable(tmp_path, slimpajama, tok, monkeypatch, capsys):
    root, files = slimpajama
    out = tmp_path / "out"
    monkeypatch.setenv(faults.ENV, faults.arm({"data_prep.units": {"kill_unit": 5}})[faults.ENV])
    assert main(tok_args([root], out, tok, "--unit-size", "4k", "--workers", "2")) == 2
    err = capsys.readouterr().err
    assert "died (killed by SIGKILL (out of memory?)) while processing unit 5" in err and "resume" in err
    monkeypatch.delenv(faults.ENV)
    assert main(tok_args([root], out, tok, "--unit-size", "4k", "--workers", "2")) == 0
    from data_prep import read_manifest

    m = read_manifest(out)
    assert m["documents_read"] == sum(len(r) for _, r in files) and m["run"]["units_reused"] >= 1


# --------------------------------------------------------------------------------------------
# tokenizers


def test_train_tokenizer_reads_a_bounded_random_sample(tmp_path, slimpajama):
    from data_prep.tokenizer import TokenizerTrainConfig, train_tokenizer

    root, files = slimpajama
    total_text = sum(len(r["text"].encode()) for _, recs in files for r in recs)
    res = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"s{seed}-{len(res)}.model"
        res[len(res)] = (train_tokenizer(TokenizerTrainConfig(
            inputs=[str(root)], output=out, vocab_size=400, seed=seed, sample_bytes=20_000)), out)
    (a, fa), (b, fb), (c, fc) = res.values()
    assert a.text_bytes_read < total_text / 3 and a.pieces_read < a.pieces_total == len(files)
    assert fa.read_bytes() == fb.read_bytes() and a.documents_seen == b.documents_seen  # deterministic
    assert fc.read_bytes() != fa.read_bytes()  # another seed, another sample
    # the sample is random, not the first files: seeds pick different documents
    assert a.documents_seen > 0 and c.documents_seen > 0


def _train_spm(path: Path, texts: list[str], **kw) -> Path:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=800,
                                   character_coverage=0.995, minloglevel=2, **kw)
    path.write_bytes(model.getvalue())
    return path


def test_existing_models_llama_style_and_without_eos(tmp_path, texts):
    from data_prep import read_manifest, read_tokens

    inp = tmp_path / "docs.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:40]))
    lines = [ln for t in texts[:60] for ln in t.splitlines() if ln.strip()]
    # Llama's tokenizer.model settings: BPE, byte fallback, <unk>=0 <s>=1 </s>=2, dummy prefix
    llama = _train_spm(tmp_path / "llama.model", lines, model_type="bpe", byte_fallback=True,
                       split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity")
    sp = load_sp(llama)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.id_to_piece(2)) == (0, 1, 2, "</s>")
    out = tmp_path / "llama"
    assert main(tok_args([inp], out, llama, "--val-fraction", "0")) == 0
    m = read_manifest(out)
    assert m["eos_id"] == 2 and m["vocab_size"] == 800 and m["dtype"] == "uint16"
    flat = np.concatenate(list(read_tokens(out, "train")))
    assert np.array_equal(flat[: len(sp.encode(texts[0])) + 1], [*sp.encode(texts[0]), 2])

    # a model without an EOS piece: a clear error, unless --eos-piece names one of its pieces
    no_eos = _train_spm(tmp_path / "noeos.model", lines, model_type="unigram", eos_id=-1, bos_id=-1,
                        user_defined_symbols=["<|endoftext|>"])
    proc = subprocess.run([sys.executable, "-m", "data_prep", *tok_args([inp], tmp_path / "x", no_eos)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no end-of-sequence piece" in proc.stderr and "--eos-piece" in proc.stderr and "noeos.model" in proc.stderr
    assert main(tok_args([inp], tmp_path / "y", no_eos, "--eos-piece", "<nope>")) == 2
    out = tmp_path / "z"
    assert main(tok_args([inp], out, no_eos, "--eos-piece", "<|endoftext|>", "--val-fraction", "0")) == 0
    eos = load_sp(no_eos).piece_to_id("<|endoftext|>")
    assert read_manifest(out)["eos_id"] == eos > 0
    flat = np.concatenate(list(read_tokens(out, "train")))
    assert (flat == eos).sum() >= 40 - 1  # every document but a cut last one ends with it
