"""Bad input on the data side (issue 20) and runs side by side on one machine (issue 23).

Every test starts from the real data of the session fixtures (``tiny_data``: a demo corpus, a 512-piece
sentencepiece model, MDS shards made by ``data_prep tokenize``), copied into ``tmp_path`` before anything is
changed, and checks that a refused command names the input and leaves what existed byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, run_data_prep, run_pretrain, tiny_overrides

DEMO = ROOT / "configs" / "demo_cpu.yaml"


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tokenize_args(inputs, out, tok, *extra) -> list[str]:
    return ["-q", "tokenize", "--input", *map(str, inputs), "--output", str(out), "--tokenizer", str(tok),
            "--seq-len", "64", "--workers", "1", *extra]


@pytest.fixture
def corpus(tiny_data, tmp_path) -> Path:
    """A copy of the demo corpus in SlimPajama's layout (DIR/train/chunkN/example_train_K.jsonl.zst)."""
    dst = tmp_path / "slimpajama"
    shutil.copytree(tiny_data.parent / "raw", dst)
    return dst


@pytest.fixture
def tok(tiny_data) -> Path:
    return tiny_data.parent / "tok.model"


def copy_data(tiny_data: Path, dst: Path, raw: bool) -> Path:
    """A copy of the tokenized data; ``raw``: with every shard decompressed, else compressed shards only."""
    from pretrain.data import DataConfig

    shutil.copytree(tiny_data, dst, ignore=shutil.ignore_patterns("*.mds"))
    if raw:
        assert DataConfig(path=str(dst)).build().decompress_shards() > 0
    return dst


def shards(data: Path, pattern: str) -> list[Path]:
    return sorted((data / "train").rglob(pattern))


def flip_byte(path: Path, offset: int, bit: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# 1. the output rule for data_prep's commands


def test_tokenize_never_replaces_its_input(corpus, tok, tmp_path):
    """`tokenize --input D/train --output D --overwrite` used to delete the corpus it had just read."""
    before = hashes(corpus)
    res = run_data_prep(tokenize_args([corpus / "train"], corpus, tok, "--overwrite"))
    assert res.returncode == 2, res.stderr
    assert f"--output {corpus} contains the input {corpus / 'train'}" in res.stderr
    # an output inside the input, or holding the tokenizer, is refused too
    res = run_data_prep(tokenize_args([corpus], corpus / "train" / "tokens", tok))
    assert res.returncode == 2 and "lies inside the input" in res.stderr, res.stderr
    assert hashes(corpus) == before and not (corpus / "train" / "tokens").exists()
    tok_dir = tmp_path / "tokdir"
    tok_dir.mkdir()
    shutil.copy(tok, tok_dir / "tok.model")
    res = run_data_prep(tokenize_args([corpus / "train" / "chunk1"], tok_dir, tok_dir / "tok.model", "--overwrite"))
    assert res.returncode == 2 and f"contains the tokenizer {tok_dir / 'tok.model'}" in res.stderr, res.stderr
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tok.model"]
    # a directory that is not tokenize's own is never replaced, even with --overwrite
    junk = tmp_path / "junk"
    (junk / "train").mkdir(parents=True)
    (junk / "train" / "mine.txt").write_text("precious")
    res = run_data_prep(tokenize_args([corpus / "train" / "chunk1"], junk, tok, "--overwrite"))
    assert res.returncode == 2 and "does not look like" in res.stderr, res.stderr
    assert hashes(junk) == {"train/mine.txt": hashlib.sha256(b"precious").hexdigest()}
    assert hashes(corpus) == before


def test_train_tokenizer_output_rule(corpus, tok, tmp_path):
    before = hashes(corpus)
    args = ["-q", "train-tokenizer", "--input", str(corpus / "train" / "chunk1"), "--vocab-size", "400",
            "--max-sentences", "2000", "--sample-bytes", "200k"]
    res = run_data_prep([*args, "--output", str(corpus / "train" / "chunk1" / "tok.model")])
    assert res.returncode == 2 and "lies inside the input" in res.stderr, res.stderr
    notes = tmp_path / "notes.model"
    notes.write_text("not a model")
    res = run_data_prep([*args, "--output", str(notes), "--overwrite"])
    assert res.returncode == 2 and "does not look like a sentencepiece model" in res.stderr, res.stderr
    assert notes.read_text() == "not a model" and hashes(corpus) == before
    model = tmp_path / "tok.model"
    shutil.copy(tok, model)
    res = run_data_prep([*args, "--output", str(model)])
    assert res.returncode == 2 and "already exists (pass --overwrite" in res.stderr, res.stderr
    assert model.read_bytes() == tok.read_bytes()
    assert run_data_prep([*args, "--output", str(model), "--overwrite"]).returncode == 0
    assert model.read_bytes() != tok.read_bytes()  # replaced by the new 400-piece model


def test_demo_corpus_output_rule(tmp_path):
    site = tmp_path / "site"  # a site-packages directory: an input of the packages source
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text('"""A package docstring long enough to be kept as a document."""\n')
    before = hashes(site)
    res = run_data_prep(["-q", "demo-corpus", "--sources", "packages", "--site-packages", str(site),
                         "--output", str(site / "corpus")])
    assert res.returncode == 2 and f"lies inside the site-packages directory {site}" in res.stderr, res.stderr
    assert hashes(site) == before and not (site / "corpus").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    res = run_data_prep(["-q", "demo-corpus", "--output", str(mine), "--max-mb", "0.05", "--overwrite"])
    assert res.returncode == 2 and "does not look like a demo corpus" in res.stderr, res.stderr
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    out = tmp_path / "raw"
    assert run_data_prep(["-q", "demo-corpus", "--output", str(out), "--max-mb", "0.05"]).returncode == 0
    first = hashes(out)
    res = run_data_prep(["-q", "demo-corpus", "--output", str(out), "--max-mb", "0.1"])
    assert res.returncode == 2 and "pass --overwrite" in res.stderr and hashes(out) == first
    assert run_data_prep(["-q", "demo-corpus", "--output", str(out), "--max-mb", "0.1", "--overwrite"]).returncode == 0
    assert hashes(out) != first and sorted(p.name for p in tmp_path.iterdir()) == ["mine", "raw", "site"]
    for flag in ("nan", "inf"):
        assert run_data_prep(["-q", "demo-corpus", "--output", str(tmp_path / "x"), "--max-mb", flag]).returncode == 2


# --------------------------------------------------------------------------------------------
# 2. an unreadable input directory is an error, never a silent gap


def test_unreadable_input_directory_is_an_error(corpus, tok, tmp_path):
    """A directory of the corpus that cannot be listed stops tokenize with an error naming it.

    chmod 000 does not stop root, who runs these tests in containers: as root the command runs under
    ``setpriv`` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its capability bounding set, so
    the kernel's permission check applies to it as to any user: the same EACCES from ``scandir`` that a
    user gets, through the same code path (``os.walk``'s error callback).
    """
    hidden = corpus / "train" / "chunk2"
    out = tmp_path / "tokens"
    cmd = [sys.executable, "-m", "data_prep", *tokenize_args([corpus / "train"], out, tok)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: chmod 000 cannot make a directory unreadable")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    hidden.chmod(0)
    try:
        res = run_cli(cmd)
    finally:
        hidden.chmod(0o755)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"cannot read the directory {hidden}" in res.stderr and "Permission denied" in res.stderr
    assert not out.exists()


def test_linked_input_directory_is_read(corpus, tmp_path):
    """A link to a directory inside an input directory is followed (os.walk's default skips it), once."""
    from data_prep.readers import resolve_inputs

    elsewhere = tmp_path / "elsewhere"
    shutil.move(corpus / "train" / "chunk2", elsewhere)
    (corpus / "train" / "chunk2").symlink_to(elsewhere, target_is_directory=True)
    (corpus / "train" / "chunk1" / "loop").symlink_to(corpus / "train", target_is_directory=True)
    found = resolve_inputs([str(corpus / "train")])
    assert {p.name for p in found if p.parent.name == "chunk2"} == {p.name for p in elsewhere.iterdir()}
    expected = [*(corpus / "train" / "chunk1").glob("*.jsonl.zst"), *elsewhere.glob("*.jsonl.zst")]
    assert len(found) == len({os.path.realpath(p) for p in found}) == len(expected)


# --------------------------------------------------------------------------------------------
# 3. shard hashes on every path from disk to a batch


def test_flipped_byte_in_compressed_shard_is_refused(tiny_data, tmp_path):
    from pretrain.data import DataConfig, ShardError

    data = copy_data(tiny_data, tmp_path / "data", raw=False)
    zipped = shards(data, "*.mds.zstd")[0]
    flip_byte(zipped, zipped.stat().st_size // 2)
    before = hashes(data)
    with pytest.raises(ShardError, match=f"{zipped}: corrupt shard"):
        DataConfig(path=str(data)).build().decompress_shards()
    assert not zipped.with_suffix("").exists()  # no raw shard made from it
    assert hashes(data) == before  # nothing written


def test_flipped_byte_in_present_raw_shard_is_restored(tiny_data, tmp_path):
    """A raw shard decompressed by an earlier run, corrupted since: streaming would read it as it is."""
    from pretrain.data import DataConfig

    data = copy_data(tiny_data, tmp_path / "data", raw=True)
    good = hashes(data)
    raw = shards(data, "*.mds")[0]
    flip_byte(raw, raw.stat().st_size - 3, 0x80)  # a high bit of a token id
    assert DataConfig(path=str(data)).build().decompress_shards() == 1
    assert hashes(data) == good  # written again from its verified compressed copy


@pytest.fixture
def uncompressed(tiny_data, tok, tmp_path) -> Path:
    """One corpus file tokenized with --compression none --val-fraction 0: raw shards only, an empty val split."""
    out = tmp_path / "plain"
    src = sorted((tiny_data.parent / "raw" / "train" / "chunk1").iterdir())[0]
    res = run_data_prep(tokenize_args([src], out, tok, "--compression", "none", "--val-fraction", "0"))
    assert res.returncode == 0, res.stderr
    return out


def test_flipped_byte_in_uncompressed_shard_is_refused_by_name(uncompressed):
    from pretrain.data import DataConfig, ShardError

    raw = shards(uncompressed, "*.mds")[0]
    flip_byte(raw, raw.stat().st_size - 2)
    before = hashes(uncompressed)
    with pytest.raises(ShardError, match=f"{raw}: corrupt shard.*no compressed copy"):
        DataConfig(path=str(uncompressed)).build().decompress_shards()
    assert hashes(uncompressed) == before
    assert DataConfig(path=str(uncompressed), validate_hash=False).build().decompress_shards() == 0


# --------------------------------------------------------------------------------------------
# 4. the data's consistency, checked with the config (pretrain.py --dry-run and every launch)


def check(data: Path, **cfg) -> list[tuple[str, object, str]]:
    from pretrain.data import DataConfig

    return DataConfig(path=str(data), **cfg).build().check_files()


def test_tokenizer_must_be_the_datas(tiny_data, tok, tmp_path):
    data = copy_data(tiny_data, tmp_path / "data", raw=False)
    assert check(data) == []
    other = tmp_path / "other.model"  # another tokenizer: trained on the same corpus with another vocabulary
    res = run_data_prep(["-q", "train-tokenizer", "--input", str(tiny_data.parent / "raw" / "train" / "chunk1"),
                         "--output", str(other), "--vocab-size", "400", "--max-sentences", "2000",
                         "--sample-bytes", "200k"])
    assert res.returncode == 0, res.stderr
    (problem,) = check(data, tokenizer=str(other))
    assert problem[0] == "tokenizer" and "the tokenizer the data was made with" in problem[2] and str(tok) in problem[2]
    problems = check(data, tokenizer=str(other), tokenizer_mismatch_ok=True)
    assert [p[0] for p in problems] == ["tokenizer"] and "vocabulary size 512" in problems[0][2]
    # the same model, re-saved with an extra (unknown to sentencepiece) protobuf field: deliberate, accepted
    same = tmp_path / "resaved.model"
    same.write_bytes(tok.read_bytes() + b"\xc0\x3e\x01")
    assert check(data, tokenizer=str(same))[0][0] == "tokenizer"
    assert check(data, tokenizer=str(same), tokenizer_mismatch_ok=True) == []
    # the manifest's own tokenizer file replaced after tokenizing
    manifest = json.loads((data / "manifest.json").read_text())
    moved = tmp_path / "moved.model"
    shutil.copy(other, moved)
    manifest["tokenizer"]["path"] = str(moved)
    (data / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = check(data)
    assert problem[0] == "path" and "replaced after tokenizing" in problem[2]


def test_manifest_must_describe_its_shards(tiny_data, tmp_path, tok):
    data = copy_data(tiny_data, tmp_path / "data", raw=False)
    good = json.loads((data / "manifest.json").read_text())

    def with_manifest(**changes) -> list:
        (data / "manifest.json").write_text(json.dumps({**good, **changes}))
        return check(data)

    # one problem per split, naming its shard
    train, val = with_manifest(vocab_size=100)  # below the token ids: used to pass, then a traceback
    assert "token ids below the vocab_size 100" in train[2] and "train/part-00000/shard.00000.mds holds id" in train[2]
    assert "val/part-00000/shard.00000.mds" in val[2]
    train, val = with_manifest(dtype="uint32")
    assert "ndarray:uint32:65" in train[2] and "ndarray:uint16:65" in train[2]
    train, val = with_manifest(seq_len=32, sample_len=33)
    assert "seq_len 32" in train[2] and "ndarray:uint16:65" in train[2]
    # through the launch's checks: pretrain.py --dry-run refuses, naming the key
    res = run_pretrain(["--config", str(DEMO), "--dry-run", *tiny_overrides(data, tmp_path / "run"),
                        "data.seq_len=32", "model.vocab_size=512"])
    assert res.returncode != 0 and "data.path" in res.stdout + res.stderr and "seq_len 32" in res.stdout + res.stderr
    assert not (tmp_path / "run").exists()


def test_empty_split_is_refused(uncompressed):
    (problem,) = check(uncompressed)
    assert problem[0] == "path" and "'val' split has samples" in problem[2] and "--val-fraction" in problem[2]


# --------------------------------------------------------------------------------------------
# 5. runs on one machine never collide (issue 23)


def test_clean_removes_only_unmapped_segments():
    """Streaming's own cleaner unlinks every segment, live runs' too; ours only those no process maps."""
    from pretrain.data import _clean_unmapped_segments

    live, stale = Path("/dev/shm/999990_locals"), Path("/dev/shm/999991_locals")
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    for p in (live, stale):
        p.write_bytes(b"\0" * 4096)
    try:
        with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):
            _clean_unmapped_segments()
            assert live.exists() and not stale.exists()
    finally:
        for p in (live, stale):
            p.unlink(missing_ok=True)


def test_four_runs_started_together(tiny_data, tmp_path):
    """Four single-process runs started at once, as a user would start them: no PRETRAIN_SHM_LOCK, no
    PRETRAIN_CLEAN_STALE_SHM; each cleans stale shared memory and creates its loaders, none collides."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRETRAIN_SHM_LOCK", "PRETRAIN_CLEAN_STALE_SHM")}
    env.update(PRETRAIN_THREADS="1", PYTHONUNBUFFERED="1")
    runs = [tmp_path / f"run{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "pretrain.py", "--config", str(DEMO),
                               *tiny_overrides(tiny_data, run, **{"train.max_steps": 2, "checkpoint.interval": 0,
                                                                  "eval.interval": 0, "train.seed": i})],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, run in enumerate(runs)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err), run in zip(procs, outs, runs, strict=True):
        assert p.returncode == 0, f"{run}: exit {p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 2


def test_multi_rank_leader_holds_the_machine_lock(tmp_path, monkeypatch, capsys):
    """A multi-rank run's local rank 0 holds the machine-wide lock while its ranks create their loaders (a 2-rank
    demo started beside a study's workers read a worker's shared-memory name as its leader's); other local ranks
    do not take it; a leader that cannot get it within the timeout goes on and says so."""
    import fcntl

    from pretrain import data as data_mod

    lock = tmp_path / "shm.lock"
    monkeypatch.setenv("PRETRAIN_SHM_LOCK", str(lock))

    def taken() -> bool:
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    with data_mod.shared_memory_lock(2, local_rank=0):
        assert taken()
    assert not taken()
    with data_mod.shared_memory_lock(2, local_rank=1):
        assert not taken()
    monkeypatch.setattr(data_mod, "LEADER_LOCK_TIMEOUT_S", 0.2)
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds it
    try:
        with data_mod.shared_memory_lock(2, local_rank=0):
            pass
    finally:
        os.close(fd)
    assert "stayed taken" in capsys.readouterr().out
