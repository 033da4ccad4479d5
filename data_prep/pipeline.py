"""``tokenize``: documents -> token ids (+EOS) -> packed samples -> MDS train/val.

Flow: ``resolve_inputs`` -> ``units.plan_units`` (deterministic work units) -> check the output
directory (refuse a different dataset, resume a partial run of the same command) -> worker
processes (``data_prep.worker``) process the units not yet done, each writing MDS part
datasets and a done marker under ``DIR/.work`` -> merge the parts' indexes in unit order ->
``writer.publish`` (splits moved into place, manifest written last).

The output depends only on the inputs and the settings recorded in the manifest's identity,
never on the number of workers or on interruptions: rerunning the same command after a kill
reuses the finished units and gives byte-identical shards and the same manifest counts.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain import faults
from pretrain.outputs import OutputError, check_disjoint, check_replaceable

from .errors import DataPrepError
from .fsutil import atomic_write_bytes, atomic_write_json, sha256_file
from .manifest import FORMAT, MANIFEST_NAME, SPLITS, VERSION, identity, identity_diff, read_manifest
from .pack import token_dtype
from .readers import DEFAULT_SOURCE_FIELD, SkipLog, input_paths, resolve_inputs
from .split import SPLIT_HASH
from .tokenizer import ROUND_TRIP_PROBE, load_tokenizer, resolve_eos
from .units import Unit, auto_unit_size, default_workers, plan_to_json, plan_units
from .writer import (
    COLUMN,
    INDEX_NAME,
    LOCK_NAME,
    OLD_PREFIX,
    SKIPPED_NAME,
    TMP_PREFIX,
    WORK_NAME,
    WorkArea,
    clean_leftovers,
    done_units,
    exclusive_lock,
    part_width,
    publish,
    read_index,
    source_dirname,
    write_index,
)

log = logging.getLogger(__name__)

PACKING = ("per unit: each split's (and with per-source, each source's) documents, each followed by "
           "EOS, concatenated in input order and cut into rows of sample_len; the last partial row "
           "of every unit is dropped (dropped_tail_tokens)")
COMPRESSIONS = ("zstd", "none")
LAYOUTS = ("single", "per-source")
MIN_UNIT_SIZE = 4096
RUN_FIELDS = ("wall_time_s", "tokens_per_s", "run")  # differ between runs of the same dataset


@dataclass(frozen=True)
class TokenizeConfig:
    inputs: Sequence[str]
    output: Path
    tokenizer: Path
    seq_len: int
    val_fraction: float = 0.01
    workers: int = field(default_factory=default_workers)
    shard_size_limit: int = 1 << 26
    compression: str = "zstd"  # "zstd" or "none"
    text_field: str = "text"
    source_field: str = DEFAULT_SOURCE_FIELD
    per_source: bool = False
    unit_size: int | None = None  # bytes of input per work unit; None: auto (see units.py)
    strict: bool = False
    eos_piece: str | None = None
    overwrite: bool = False
    progress: bool = True


def _validate(cfg: TokenizeConfig) -> None:
    if cfg.seq_len < 1:
        raise DataPrepError(f"--seq-len must be >= 1, got {cfg.seq_len}")
    if not (0.0 <= cfg.val_fraction < 1.0):
        raise DataPrepError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.workers < 1:
        raise DataPrepError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.compression not in COMPRESSIONS:
        raise DataPrepError(f"--compression must be one of {COMPRESSIONS}, got {cfg.compression!r}")
    if not (0 < cfg.shard_size_limit < 1 << 32):
        raise DataPrepError(
            f"--shard-size-limit must be in (0, 2**32) bytes (MDS uses uint32 offsets), "
            f"got {cfg.shard_size_limit}"
        )
    if not cfg.text_field:
        raise DataPrepError("--text-field must not be empty")
    if cfg.per_source and not cfg.source_field:
        raise DataPrepError("--per-source needs a --source-field")
    if cfg.unit_size is not None and cfg.unit_size < MIN_UNIT_SIZE:
        raise DataPrepError(f"--unit-size must be >= {MIN_UNIT_SIZE} bytes, got {cfg.unit_size}")


# --------------------------------------------------------------------------------------------
# output directory states


def is_tokenize_output(path: Path) -> bool:
    """a dataset written by `data_prep tokenize` (its manifest.json), or one it is writing (.work)"""
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / WORK_NAME).is_dir():
        return True
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:  # only what an interrupted run leaves before it writes its plan
        return all(e.name == LOCK_NAME or e.name.startswith((TMP_PREFIX, OLD_PREFIX)) for e in path.iterdir())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_output(out_dir: Path, inputs: list[tuple[str, Path]]) -> None:
    """The output rule (:mod:`pretrain.outputs`) for ``--output``: never an input (nor containing or inside one:
    ``--input D/train --output D`` would replace the corpus' train directory), and an existing directory only
    when it is tokenize's own (even with --overwrite); raises ``OutputError`` before anything is written."""
    check_disjoint(out_dir, inputs, flag="--output")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--output {out_dir} exists and is not a directory; it is not replaced, even with "
                          "--overwrite: choose a new or empty directory")
    check_replaceable(out_dir, overwrite=True, owned_by=is_tokenize_output, flag="--output")


def _check_output_dir(out_dir: Path, planned: dict[str, Any], plan: dict[str, Any], overwrite: bool) -> str:
    """Decide what to do with ``out_dir``: 'fresh', 'resume' or 'complete' (nothing to do).

    Refuses (``DataPrepError``) a directory holding a different dataset or a partial run with
    other settings, unless ``overwrite``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataPrepError(f"--output {out_dir} exists and is not a directory")
    if not out_dir.exists():
        return "fresh"
    hint = "pass --overwrite to replace it, or choose another --output"
    mpath = out_dir / MANIFEST_NAME
    same_manifest = False
    if mpath.exists():
        try:
            old = read_manifest(out_dir)
        except ValueError as e:
            if not overwrite:
                raise DataPrepError(f"--output {out_dir}: existing {mpath} is unreadable ({e}); {hint}") from e
        else:
            diffs = identity_diff(old, planned)
            if diffs and not overwrite:
                raise DataPrepError(
                    f"--output {out_dir} already holds a different dataset ({'; '.join(diffs)}); {hint}"
                )
            same_manifest = not diffs
    work = WorkArea(out_dir)
    if work.root.exists():
        stored = _read_plan(work)
        if stored == plan:
            return "resume"
        if stored is None and not done_units(work):
            return "fresh"  # killed before it wrote its plan: nothing to keep
        if not overwrite:
            what = "unreadable plan" if stored is None else "; ".join(
                identity_diff(stored.get("identity", {}), plan["identity"])) or "different work units"
            raise DataPrepError(
                f"--output {out_dir} holds an unfinished run with other settings ({what}) in "
                f"{work.root}; rerun that command to resume it, or pass --overwrite to discard it"
            )
        return "fresh"
    if same_manifest and not overwrite:
        return "complete"
    if mpath.exists():
        return "fresh"
    ours = {LOCK_NAME, WORK_NAME}
    others = sorted(
        e.name for e in out_dir.iterdir()
        if e.name not in ours and not e.name.startswith((TMP_PREFIX, OLD_PREFIX))
    )
    if others and not overwrite:
        raise DataPrepError(
            f"--output {out_dir} is not empty and has no {MANIFEST_NAME} (found {others[:5]}); "
            f"pass --overwrite to replace its {'/'.join(SPLITS)} directories, or choose an empty directory"
        )
    return "fresh"


def _read_plan(work: WorkArea) -> dict[str, Any] | None:
    try:
        return json.loads(work.plan.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------


def run_tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize, pack and write the dataset; returns the manifest that was written.

    Starts worker processes with multiprocessing's forkserver: a script calling this must
    guard the call with ``if __name__ == "__main__":``.
    """
    _validate(cfg)
    out_dir = Path(cfg.output).expanduser().absolute()
    files = resolve_inputs(cfg.inputs)
    tok_path = Path(cfg.tokenizer).expanduser().absolute()
    check_output(out_dir, [*input_paths(cfg.inputs, files), ("tokenizer", tok_path)])
    sizes = [p.stat().st_size for p in files]
    tok = load_tokenizer(tok_path)
    vocab_size = tok.vocab_size
    eos_id = resolve_eos(tok, tok_path, cfg.eos_piece)
    if tok.kind == "tokenizers" and tok.decode(tok.encode(ROUND_TRIP_PROBE)) != ROUND_TRIP_PROBE:
        log.warning("--tokenizer %s: decode(encode(text)) != text (its normalizer or decoder changes the "
                    "text): the documents cannot be recovered exactly from the tokens", tok_path)
    dtype = token_dtype(vocab_size)
    sample_len = cfg.seq_len + 1
    if sample_len * (4 if dtype == "uint32" else 2) + 8 > cfg.shard_size_limit:
        raise DataPrepError(
            f"--shard-size-limit {cfg.shard_size_limit} is smaller than one sample "
            f"({sample_len} x {dtype}); raise it"
        )
    total_bytes = sum(sizes)
    unit_size = cfg.unit_size or auto_unit_size(total_bytes)
    units = plan_units(files, sizes, unit_size)
    layout = "per-source" if cfg.per_source else "single"

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "seq_len": cfg.seq_len,
        "sample_len": sample_len,
        "dtype": dtype,
        "column": COLUMN,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "tokenizer": {"path": str(tok_path), "sha256": sha256_file(tok_path), "kind": tok.kind},
        "layout": layout,
        "splits": {},
        "documents_read": 0,
        "skipped": {},
        "inputs": [{"path": str(p), "bytes": n} for p, n in zip(files, sizes, strict=True)],
        "input_bytes": total_bytes,
        "val_fraction": cfg.val_fraction,
        "split_hash": SPLIT_HASH,
        "packing": PACKING,
        "text_field": cfg.text_field,
        "source_field": cfg.source_field,
        "compression": cfg.compression,
        "shard_size_limit": cfg.shard_size_limit,
        "unit_size": unit_size,
        "units": len(units),
    }
    plan = json.loads(json.dumps({"identity": identity(manifest), "units": plan_to_json(units)}))
    _check_output_dir(out_dir, manifest, plan, cfg.overwrite)

    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir):
        state = _check_output_dir(out_dir, manifest, plan, cfg.overwrite)  # again, under the lock
        if state == "complete":
            log.info("%s already holds this dataset (same settings and inputs); nothing to do "
                     "(pass --overwrite to rebuild it)", out_dir)
            return read_manifest(out_dir)
        clean_leftovers(out_dir)
        work = WorkArea(out_dir)
        if state == "fresh":
            shutil.rmtree(work.root, ignore_errors=True)
            work.root.mkdir()
            atomic_write_bytes(work.plan, json.dumps(plan).encode("utf-8"))
        elif work.publish.exists():
            log.info("resuming the publishing step of an interrupted run in %s", out_dir)
            return publish(out_dir, work)
        return _run(cfg, out_dir, work, units, manifest, sample_len, dtype, eos_id, tok_path)


def _run(cfg, out_dir: Path, work: WorkArea, units: list[Unit], manifest: dict[str, Any],
         sample_len: int, dtype: str, eos_id: int, tok_path: Path) -> dict[str, Any]:
    from .worker import WorkerConfig, process_start_time

    width = part_width(len(units))
    done = done_units(work) & set(range(len(units)))
    pending = [u for u in units if u.index not in done]
    for u in pending:  # parts of units killed mid-way are redone from scratch
        work.clear_unit(u.index, width, cfg.per_source)
    if done:
        log.info("resuming: %d of %d units already done, %d to do", len(done), len(units), len(pending))
    hooks = faults.get("data_prep.units", {})  # test-only fault injection (see pretrain.faults)
    wcfg = WorkerConfig(
        out_dir=str(out_dir),
        tokenizer=str(tok_path),
        eos_id=eos_id,
        sample_len=sample_len,
        dtype=dtype,
        val_fraction=cfg.val_fraction,
        text_field=cfg.text_field,
        source_field=cfg.source_field,
        per_source=cfg.per_source,
        compression=None if cfg.compression == "none" else cfg.compression,
        shard_size_limit=cfg.shard_size_limit,
        part_width=width,
        strict=cfg.strict,
        parent_pid=os.getpid(),
        parent_start=process_start_time(os.getpid()),
        hooks=hooks,
        **({"flush_tokens": int(hooks["flush_tokens"])} if "flush_tokens" in hooks else {}),
    )
    total_bytes = manifest["input_bytes"]
    done_bytes = sum(units[i].bytes for i in done)
    t_start = time.time()
    runner = _UnitRunner(cfg, wcfg, pending, total_bytes, done_bytes)
    stats_now = runner.run()
    t0 = runner.t0 or t_start
    return _finalize(cfg, out_dir, work, units, manifest, stats_now, t0, t_start, runner, len(done))


# --------------------------------------------------------------------------------------------
# running the workers


_CTX = None


def _mp_context():
    """forkserver (workers fork from a server that imported streaming & co once), else spawn."""
    global _CTX
    if _CTX is None:
        methods = multiprocessing.get_all_start_methods()
        if "forkserver" in methods:
            _CTX = multiprocessing.get_context("forkserver")
            _CTX.set_forkserver_preload(["data_prep.worker", "streaming", "sentencepiece", "tokenizers",
                                         "pyarrow.parquet", "zstandard"])
        else:  # pragma: no cover
            _CTX = multiprocessing.get_context("spawn")
    return _CTX


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}" + (" (out of memory?)" if -code == 9 else "")
    return f"exit code {code}"


class _UnitRunner:
    """Runs units on worker processes and shows progress; collects the units' stats."""

    def __init__(self, cfg: TokenizeConfig, wcfg, pending: list[Unit], total_bytes: int, done_bytes: int) -> None:
        self.cfg = cfg
        self.wcfg = wcfg
        self.pending = pending
        self.total_bytes = total_bytes
        self.done_bytes = done_bytes
        self.t0: float | None = None
        self.startup_s = 0.0
        self.docs = self.text_bytes = self.input_bytes = self.tokens = 0
        self.skips = SkipLog()
        self.n_workers = 0
        self.worker_cpu_s = 0.0  # CPU seconds of the workers on their units (all their threads)

    def run(self) -> dict[int, dict[str, Any]]:
        if not self.pending:
            self.t0 = time.time()
            return {}
        from multiprocessing.connection import wait

        from tqdm import tqdm

        from .worker import worker_main

        ctx = _mp_context()
        tasks = ctx.Queue()
        n = min(self.cfg.workers, len(self.pending))
        self.n_workers = n
        t_spawn = time.time()
        barrier = ctx.Barrier(n)  # start together once every worker has loaded: clean timings
        pipes = [ctx.Pipe(duplex=False) for _ in range(n)]
        procs = [ctx.Process(target=worker_main, args=(i, self.wcfg, tasks, pipes[i][1], barrier), daemon=True,
                             name=f"data_prep-worker-{i}") for i in range(n)]
        for p in procs:
            p.start()
        for _, w in pipes:
            w.close()  # the workers hold the sending ends
        readers = {r: i for i, (r, _) in enumerate(pipes)}
        for u in self.pending:
            tasks.put(u)
        for _ in procs:
            tasks.put(None)
        log.info("tokenizing %d units with %d worker processes", len(self.pending), n)
        bar = None
        done: dict[int, dict[str, Any]] = {}
        current: dict[int, int | None] = {}
        ready: set[int] = set()
        exited: set[int] = set()
        remaining = {u.index for u in self.pending}

        def handle(msg) -> None:
            nonlocal bar
            kind, wid = msg[0], msg[1]
            if kind == "progress":
                _, _, d, tb, ib, tk = msg
                self.docs += d
                self.text_bytes += tb
                self.input_bytes += ib
                self.tokens += tk
                if bar is not None:
                    bar.update(ib)
                    self._postfix(bar)
            elif kind == "ready":
                ready.add(wid)
                if len(ready) == n:
                    self.t0 = time.time()
                    self.startup_s = self.t0 - t_spawn
                    bar = tqdm(
                        desc="tokenize", total=self.total_bytes, initial=self.done_bytes, unit="B",
                        unit_scale=True, unit_divisor=1000, file=sys.stderr,
                        disable=not self.cfg.progress, mininterval=1.0, dynamic_ncols=True, smoothing=0.1,
                    )
            elif kind == "start":
                current[wid] = msg[2]
            elif kind == "done":
                unit, stats = msg[2], msg[3]
                self.worker_cpu_s += msg[4]
                done[unit] = stats
                remaining.discard(unit)
                current[wid] = None
                self.skips.add_counts(stats["skipped"])
                for reason, location, detail in stats["skipped_examples"]:
                    self.skips.warn(reason, location, detail)
            elif kind == "exit":
                exited.add(wid)
            elif kind == "error":
                unit, message, tb = msg[2], msg[3], msg[4]
                if tb:
                    log.error("worker %d failed%s:\n%s", wid,
                              f" on unit {unit}" if unit is not None else "", tb.rstrip())
                    raise DataPrepError(
                        "worker failed" + (f" on unit {unit}" if unit is not None else "")
                        + f": {message}; finished units are kept: rerun the same command to resume"
                    )
                raise DataPrepError(message)

        def drain(r) -> bool:
            """Handle every message waiting on reader ``r``; False once it is closed."""
            try:
                while r.poll():
                    handle(r.recv())
            except (EOFError, OSError):
                return False
            return True

        ok = False
        try:
            open_readers = dict(readers)
            while remaining:
                sentinels = {procs[w].sentinel: w for w in range(n) if w not in exited}
                for obj in wait(list(open_readers) + list(sentinels), timeout=1.0):
                    if obj in open_readers and not drain(obj):
                        del open_readers[obj]
                    wid = sentinels.get(obj)
                    if wid is None:
                        continue
                    # the worker process ended: read what it sent last, then judge
                    for r, w in list(open_readers.items()):
                        if w == wid:
                            drain(r)
                            del open_readers[r]
                    if wid not in exited:
                        unit = current.get(wid)
                        raise DataPrepError(
                            f"worker {wid} (pid {procs[wid].pid}) died ({_exit_text(procs[wid].exitcode)})"
                            + (f" while processing unit {unit}" if unit is not None else "")
                            + "; finished units are kept: rerun the same command to resume"
                        )
            ok = True
        finally:
            if bar is not None:
                bar.close()
            if ok:
                for p in procs:
                    p.join(timeout=30)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
            tasks.cancel_join_thread()
            tasks.close()
            for r in readers:
                r.close()
        if self.t0 is None:
            self.t0 = time.time()
        return done

    def _postfix(self, bar) -> None:
        if self.t0 is None:
            return
        dt = max(time.time() - self.t0, 1e-9)
        bar.set_postfix_str(
            f"{self.docs / dt:,.0f} doc/s, {self.tokens / dt / 1e3:,.1f}k tok/s, text {self.text_bytes / dt / 1e6:.2f} MB/s",
            refresh=False,
        )


# --------------------------------------------------------------------------------------------
# merging and publishing


def _zero(per_source: bool) -> dict[str, int]:
    d = {"documents": 0, "tokens": 0, "text_bytes": 0}
    if per_source:
        d.update(samples=0, dropped_tail_tokens=0)
    return d


def _finalize(cfg, out_dir: Path, work: WorkArea, units: list[Unit], manifest: dict[str, Any],
              stats_now: dict[int, dict[str, Any]], t0: float, t_start: float, runner: _UnitRunner,
              n_reused: int) -> dict[str, Any]:
    per_source = cfg.per_source
    all_stats = [json.loads(work.marker(u.index).read_text(encoding="utf-8")) for u in units]
    splits: dict[str, Any] = {}
    sources: set[str] = set()
    for st in all_stats:
        for s in SPLITS:
            sources.update(st["splits"][s]["sources"])
    skipped = SkipLog(max_warnings_per_reason=0)
    for s in SPLITS:
        tot = {"documents": 0, "tokens": 0, "samples": 0, "dropped_tail_tokens": 0, "text_bytes": 0}
        srcs = {src: _zero(per_source) for src in sorted(sources)}
        for st in all_stats:
            b = st["splits"][s]
            for k in tot:
                tot[k] += b[k]
            for src, v in b["sources"].items():
                for k, val in v.items():
                    srcs[src][k] += val
        if per_source:
            for src, v in srcs.items():
                v["dir"] = f"{s}/{source_dirname(src)}"
        splits[s] = {**tot, "sources": srcs}
    for st in all_stats:
        skipped.add_counts(st["skipped"])

    # merged MDS indexes, in unit order (per-source: per source, then all sources in sorted order)
    for s in SPLITS:
        base = work.stage / s
        base.mkdir(parents=True, exist_ok=True)
        if per_source:
            top: list[dict[str, Any]] = []
            for src in sorted(sources):
                d = source_dirname(src)
                (base / d).mkdir(exist_ok=True)
                shards = _merge_parts(work, all_stats, s, src)
                write_index(base / d / INDEX_NAME, {"shards": shards, "version": 2})
                top += _prefixed(shards, d)
            write_index(base / INDEX_NAME, {"shards": top, "version": 2})
        else:
            write_index(base / INDEX_NAME, {"shards": _merge_parts(work, all_stats, s, ""), "version": 2})
    _concat_skipped(work, units)

    for s in SPLITS:
        if splits[s]["samples"] == 0:
            log.warning(
                "split %r has no samples (%d tokens)%s", s, splits[s]["tokens"],
                "; raise --val-fraction or add data" if s == "val" and cfg.val_fraction > 0 else "",
            )
    wall = time.time() - t0
    tokens_now = sum(st["splits"][s]["tokens"] for st in stats_now.values() for s in SPLITS)
    docs_now = sum(st["documents_read"] for st in stats_now.values())
    text_now = sum(st["text_bytes"] for st in stats_now.values())
    input_now = sum(st["input_bytes"] for st in stats_now.values())
    manifest["splits"] = splits
    manifest["documents_read"] = sum(st["documents_read"] for st in all_stats)
    manifest["text_bytes"] = sum(st["text_bytes"] for st in all_stats)
    manifest["skipped"] = skipped.as_dict()
    manifest["skipped_total"] = skipped.total
    manifest["skipped_log"] = SKIPPED_NAME
    manifest["wall_time_s"] = round(wall, 3)
    manifest["tokens_per_s"] = round(tokens_now / wall, 1) if wall > 0 else 0.0
    manifest["run"] = {
        "workers": runner.n_workers,
        "startup_s": round(runner.startup_s, 3),
        "wall_time_s": round(wall, 3),
        "total_time_s": round(time.time() - t_start, 3),
        "units_processed": len(stats_now),
        "worker_cpu_s": round(runner.worker_cpu_s, 3),
        "units_reused": n_reused,
        "documents_per_s": round(docs_now / wall, 1) if wall > 0 else 0.0,
        "tokens_per_s": round(tokens_now / wall, 1) if wall > 0 else 0.0,
        "input_mb_per_s": round(input_now / wall / 1e6, 3) if wall > 0 else 0.0,
        "text_mb_per_s": round(text_now / wall / 1e6, 3) if wall > 0 else 0.0,
    }
    if skipped.total:
        log.warning("skipped %d bad records %s; every one is listed with file and line in %s",
                    skipped.total, skipped.as_dict(), out_dir / SKIPPED_NAME)
    atomic_write_json(work.publish, manifest)
    return publish(out_dir, work)


def _merge_parts(work: WorkArea, all_stats: list[dict[str, Any]], split: str, source: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    for st in all_stats:
        rel = st["parts"][split].get(source)
        if rel:
            part = work.stage / rel
            shards += _prefixed(read_index(part / INDEX_NAME)["shards"], part.name)
    return shards


def _prefixed(shards: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    out = []
    for shard in shards:
        shard = dict(shard)
        for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
            if shard.get(key):
                shard[key] = dict(shard[key], basename=f"{prefix}/{shard[key]['basename']}")
        out.append(shard)
    return out


def _concat_skipped(work: WorkArea, units: list[Unit]) -> None:
    dst = work.stage / SKIPPED_NAME
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "wb") as out:
        for u in units:
            p = work.skipped_log(u.index)
            if p.exists():
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dst)
