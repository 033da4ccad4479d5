"""Worker processes of ``tokenize``: each processes whole units (see ``data_prep.units``).

A worker loads the tokenizer (a sentencepiece model or a tokenizer.json) once, then takes units
from a queue. For each unit it reads the unit's pieces, routes every document to ``train``/``val``
by a stable hash of its text, encodes it, appends EOS and packs it into samples of ``sample_len``
tokens per split (and per source with ``--per-source``), which it writes as MDS part datasets
under the work area.
The unit's last partial sample per split/source is dropped and counted. Finally it fsyncs the
parts and writes the unit's done marker (atomically, last).

Messages to the parent (sent on the worker's own pipe, synchronously, so that none is lost when
a worker is killed right after): ``("ready", wid, pid)``, ``("start", wid, unit)``,
``("progress", wid, docs, text_bytes, input_bytes, tokens)`` (deltas, about twice a second),
``("done", wid, unit, stats, cpu_seconds)``, ``("error", wid, unit, message, traceback_or_None)``, ``("exit", wid)``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataPrepError
from .manifest import SPLITS
from .pack import FLUSH_TOKENS, Packer
from .readers import BadRecord, ByteCounter, Document, read_piece
from .split import split_of
from .units import Unit
from .writer import PartWriter, WorkArea, part_name, source_dirname, write_marker

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

PROGRESS_INTERVAL_S = 0.5
MAX_SOURCES = 1000  # per unit, with --per-source: more means the source field is per-document
MAX_EXAMPLES_PER_REASON = 20


@dataclass(frozen=True)
class WorkerConfig:
    out_dir: str
    tokenizer: str
    eos_id: int
    sample_len: int
    dtype: str
    val_fraction: float
    text_field: str
    source_field: str
    per_source: bool
    compression: str | None
    shard_size_limit: int
    part_width: int
    strict: bool = False
    flush_tokens: int = FLUSH_TOKENS  # pack + hand samples to the writer every this many tokens
    parent_pid: int = 0
    parent_start: int | None = None
    # test-only, from the fault point ``data_prep.units`` (``pretrain.faults``):
    #   {"pause_s": sleep after each record and before each done marker,
    #    "fail_unit": raise in that unit once it has written shards,
    #    "kill_unit": SIGKILL the worker in that unit, "flush_tokens": n}
    hooks: dict = field(default_factory=dict)


def process_start_time(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _parent_alive(pid: int, start: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0] not in (b"Z", b"X") and (start is None or int(fields[19]) == start)
    except FileNotFoundError:
        return False
    except (OSError, IndexError, ValueError):  # no procfs: fall back to a signal probe
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _die_with_parent(parent_pid: int, parent_start: int | None) -> None:
    """Never outlive the ``tokenize`` process (e.g. after a kill -9 of it): a worker that kept
    writing behind a resumed run would corrupt it. Workers are forked by a forkserver, so
    PR_SET_PDEATHSIG alone (parent = the forkserver) is not enough: a watchdog thread checks
    the main process (pid + start time, so a reused pid does not count) 5 times a second."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass
    if not parent_pid:
        return
    import threading

    def watch() -> None:
        while True:
            if not _parent_alive(parent_pid, parent_start):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.2)

    threading.Thread(target=watch, name="data_prep-watchdog", daemon=True).start()


class UnitJob:
    def __init__(self, cfg: WorkerConfig, tok: Tokenizer, unit: Unit, send=None) -> None:
        self.cfg = cfg
        self.tok = tok
        self.unit = unit
        self.send = send or (lambda *msg: None)
        self.work = WorkArea(Path(cfg.out_dir))
        self.dtype = np.dtype(cfg.dtype)

    def _writer_dir(self, split: str, source: str | None) -> Path:
        base = self.work.stage / split
        if source is not None:
            base = base / source_dirname(source)
        return base / part_name(self.unit.index, self.cfg.part_width)

    def run(self) -> dict[str, Any]:
        cfg, unit, work = self.cfg, self.unit, self.work
        work.clear_unit(unit.index, cfg.part_width, cfg.per_source)  # a killed earlier attempt
        work.done.mkdir(parents=True, exist_ok=True)
        work.skipped.mkdir(parents=True, exist_ok=True)
        compression = cfg.compression
        packers: dict[tuple[str, str | None], Packer] = {}
        by_source: dict[tuple[str, str], list[int]] = {}  # (split, source) -> [docs, tokens, bytes]
        skipped: Counter[str] = Counter()
        examples: list[list[Any]] = []
        n_examples: Counter[str] = Counter()
        skip_tmp = work.skipped_log(unit.index).with_suffix(".jsonl.tmp")
        skip_f = None
        encode = self.tok.encode
        vf = cfg.val_fraction
        per_source = cfg.per_source
        pause = float(cfg.hooks.get("pause_s", 0) or 0)
        fail_unit = cfg.hooks.get("fail_unit")
        kill_unit = cfg.hooks.get("kill_unit")
        n_docs = text_bytes = n_tokens = n_rec = 0
        rep_docs = rep_bytes = rep_tokens = 0
        rep_input = 0
        input_done = 0
        last_report = time.monotonic()
        writers: list[PartWriter] = []
        try:
            for piece in unit.pieces:
                counter = ByteCounter()
                for rec in read_piece(piece, cfg.text_field, cfg.source_field, counter):
                    if type(rec) is Document:
                        data = rec.utf8
                        split = split_of(data, vf)
                        key = (split, rec.source if per_source else None)
                        p = packers.get(key)
                        if p is None:
                            if per_source and len(packers) >= 2 * MAX_SOURCES:
                                raise DataPrepError(
                                    f"--per-source: more than {MAX_SOURCES} sources in {unit.describe()} "
                                    f"(e.g. {rec.source!r} at {rec.path}); --source-field "
                                    f"{cfg.source_field!r} does not look like a source name"
                                )
                            w = PartWriter(self._writer_dir(*key), cfg.sample_len, cfg.dtype, compression,
                                           cfg.shard_size_limit)
                            writers.append(w)
                            p = packers[key] = Packer(w, self.dtype, cfg.sample_len, cfg.eos_id, cfg.flush_tokens)
                        n = p.add(encode(rec.text))
                        s = by_source.get((split, rec.source))
                        if s is None:
                            s = by_source[(split, rec.source)] = [0, 0, 0]
                        s[0] += 1
                        s[1] += n
                        s[2] += len(data)
                        n_docs += 1
                        text_bytes += len(data)
                        n_tokens += n
                    else:
                        assert isinstance(rec, BadRecord)
                        if cfg.strict:
                            raise DataPrepError(
                                f"bad record at {rec.location}: {rec.reason} ({rec.detail}); "
                                f"stopping because of --strict"
                            )
                        skipped[rec.reason] += rec.count
                        if skip_f is None:
                            skip_f = open(skip_tmp, "w", encoding="utf-8")
                        skip_f.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
                        if n_examples[rec.reason] < MAX_EXAMPLES_PER_REASON:
                            n_examples[rec.reason] += 1
                            examples.append([rec.reason, rec.location, rec.detail])
                    n_rec += 1
                    if pause:  # test hook: slow down so that a test can kill us mid-unit
                        time.sleep(pause)
                    if kill_unit == unit.index and n_rec == 8:
                        os.kill(os.getpid(), signal.SIGKILL)  # test hook: as if the OOM killer hit us
                    if (n_rec & 15) == 0:
                        now = time.monotonic()
                        if now - last_report >= PROGRESS_INTERVAL_S:
                            cur_input = input_done + min(counter.n, piece.bytes)
                            self.send("progress", n_docs - rep_docs, text_bytes - rep_bytes,
                                      cur_input - rep_input, n_tokens - rep_tokens)
                            rep_docs, rep_bytes, rep_input, rep_tokens = n_docs, text_bytes, cur_input, n_tokens
                            last_report = now
                        if fail_unit is not None and fail_unit == unit.index and any(w.written for w in writers):
                            raise RuntimeError(f"simulated failure in unit {unit.index} (test hook)")

                input_done += piece.bytes
            for key in sorted(packers, key=lambda k: (k[0], k[1] or "")):
                packers[key].flush()
            if fail_unit is not None and fail_unit == unit.index:
                raise RuntimeError(f"simulated failure in unit {unit.index} (test hook)")
            for w in writers:
                w.finish()
        except BaseException:
            for w in writers:
                w.abort()
            if skip_f is not None:
                skip_f.close()
            raise
        if skip_f is not None:
            skip_f.flush()
            os.fsync(skip_f.fileno())
            skip_f.close()
            os.replace(skip_tmp, work.skipped_log(unit.index))
        self.send("progress", n_docs - rep_docs, text_bytes - rep_bytes, unit.bytes - rep_input, n_tokens - rep_tokens)

        stats = self._stats(packers, by_source, skipped, examples, n_docs, text_bytes)
        if pause:
            time.sleep(pause)  # test hook: a window where parts are complete but unmarked
        write_marker(work, unit.index, stats)
        return stats

    def _stats(self, packers, by_source, skipped, examples, n_docs, text_bytes) -> dict[str, Any]:
        cfg = self.cfg
        splits: dict[str, Any] = {}
        parts: dict[str, Any] = {}
        for split in SPLITS:
            tot = {"documents": 0, "tokens": 0, "samples": 0, "dropped_tail_tokens": 0, "text_bytes": 0}
            sources: dict[str, Any] = {}
            for (s, src), (d, t, b) in sorted(by_source.items()):
                if s == split:
                    sources[src] = {"documents": d, "tokens": t, "text_bytes": b}
            split_parts: dict[str, str] = {}
            for (s, src), p in packers.items():
                if s != split:
                    continue
                tot["samples"] += p.samples
                tot["dropped_tail_tokens"] += p.dropped_tail_tokens
                if src is not None:
                    sources[src].update(samples=p.samples, dropped_tail_tokens=p.dropped_tail_tokens)
                if p.writer.written:
                    split_parts[src or ""] = str(p.writer.out.relative_to(self.work.stage))
            for v in sources.values():
                tot["documents"] += v["documents"]
                tot["tokens"] += v["tokens"]
                tot["text_bytes"] += v["text_bytes"]
                if cfg.per_source:
                    v.setdefault("samples", 0)
                    v.setdefault("dropped_tail_tokens", 0)
            tot["sources"] = dict(sorted(sources.items()))
            splits[split] = tot
            parts[split] = dict(sorted(split_parts.items()))
        return {
            "unit": self.unit.index,
            "input_bytes": self.unit.bytes,
            "documents_read": n_docs,
            "text_bytes": text_bytes,
            "skipped": dict(sorted(skipped.items())),
            "skipped_examples": examples,
            "splits": splits,
            "parts": parts,
        }


def worker_main(wid: int, cfg: WorkerConfig, tasks, results, barrier=None) -> None:
    """Entry point of a worker process: ``tasks`` a queue of units (None: stop), ``results``
    the sending end of this worker's pipe to the parent."""
    _die_with_parent(cfg.parent_pid, cfg.parent_start)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us

    def send(*msg) -> None:
        results.send((msg[0], wid, *msg[1:]))

    try:
        from .tokenizer import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        import streaming  # noqa: F401  (before "ready": preloaded by the forkserver, else imported here)

        del streaming
    except BaseException as e:
        send("error", None, f"{type(e).__name__}: {e}", traceback.format_exc())
        return
    if barrier is not None:
        try:
            barrier.wait(timeout=600)
        except Exception:  # another worker failed to start: the parent reports it
            return
    send("ready", os.getpid())
    while True:
        unit = tasks.get()
        if unit is None:
            send("exit")
            return
        send("start", unit.index)
        try:
            cpu0 = time.process_time()
            stats = UnitJob(cfg, tok, unit, send).run()
            cpu = time.process_time() - cpu0
        except DataPrepError as e:
            send("error", unit.index, str(e), None)
            return
        except BaseException as e:
            send("error", unit.index, f"{type(e).__name__}: {e}", traceback.format_exc())
            return
        send("done", unit.index, stats, cpu)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("data_prep.worker is started by `python -m data_prep tokenize`")
