"""Running a study: every run once, K at a time, resumable, with a progress bar over the whole study.

Layout of the output directory::

    OUT/runs/<key>/            one run directory per run (the trainer's layout), named by the run's hash
    OUT/runs/<key>/experiment.json   written last, atomically, when the run ended (done or diverged)
    OUT/runs.csv               one row per run
    OUT/curves.csv             every ended run's logged records: key, parent, step, loss, val_loss, lr
    OUT/report.md, OUT/*.png   the study's report

A run whose ``experiment.json`` exists is never redone. A run without it is (re)started with the same
command; the trainer resumes it from its newest complete checkpoint. A branch starts from its parent's
permanent checkpoint at the branch step, so nothing before the branch point is recomputed.

Execution: ``slots=1`` runs in this process, one run after the other (no launch cost). ``slots=K`` runs K
at a time, the cores divided among them (``PRETRAIN_THREADS``); with GPUs, one run per GPU
(``CUDA_VISIBLE_DEVICES``). Each slot is a standing worker (:mod:`experiments.worker`) that runs its runs
back to back in one process, paying the interpreter and the imports once per study instead of once per
run; a worker that dies is replaced and its run retried once (it resumes from its checkpoint). A run
marked ``isolated`` (and every run with ``standing=False``) gets its own ``python pretrain.py`` process.
Both ways give the same results, bit for bit.

The runs save only what resumption and the study need: a checkpoint every ``checkpoint_minutes``
(``checkpoint.keep_last=1``), the branch points and kept steps permanently, the end of the run
(``checkpoint.interval=0``: no saves every N steps).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pretrain.errors import EXIT_INCOMPLETE, EXIT_UNSTABLE

from .study import RunSpec, Study

RESULT = "experiment.json"
REPO = Path(__file__).resolve().parent.parent
WORKER_MEMORY_GB = 1.5  # a standing worker on CPU: torch, DeepSpeed, streaming and a small run (measured 1.0-1.4)


class StudyInterrupted(RuntimeError):
    """A run was stopped by a signal (and saved): rerun the same command to continue."""


@dataclass
class RunRecord:
    """A run of the study and, once it ended, its outcome."""

    spec: RunSpec
    key: str
    run_dir: Path
    status: str = "pending"  # pending | done | diverged | failed | skipped
    final_val_loss: float = math.nan
    best_val_loss: float = math.nan
    final_train_loss: float = math.nan
    tokens: int = 0
    steps: int = 0
    wall_s: float = 0.0
    error: str = ""
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "diverged")

    def metrics(self) -> list[dict[str, Any]]:
        """The run's per-update records, one per step (a resumed run's repeated steps: the last one)."""
        if self._metrics is None:
            from pretrain.rundir import read_metrics

            path = self.run_dir / "metrics.jsonl"
            by_step: dict[int, dict[str, Any]] = {}
            if path.is_file():
                for rec in read_metrics(self.run_dir):
                    if "step" in rec:
                        by_step.setdefault(int(rec["step"]), {}).update(rec)
            self._metrics = [by_step[s] for s in sorted(by_step)]
        return self._metrics

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of metric ``key`` where it was logged."""
        steps, values = [], []
        for rec in self.metrics():
            if key in rec and rec[key] is not None:
                steps.append(int(rec["step"]))
                values.append(float(rec[key]))
        return steps, values

    def row(self) -> dict[str, Any]:
        return {
            "label": self.spec.label, "key": self.key, "status": self.status, **dict(self.spec.params),
            "final_val_loss": self.final_val_loss, "best_val_loss": self.best_val_loss,
            "final_train_loss": self.final_train_loss, "tokens": self.tokens, "steps": self.steps,
            "wall_s": round(self.wall_s, 1), "run_dir": str(self.run_dir),
            "parent": self.spec.parent or "", "branch_step": self.spec.branch_step or "",
            "overrides": " ".join(self.spec.overrides), "error": self.error,
        }

    def load(self) -> RunRecord:
        """Fill the outcome from ``experiment.json`` when the run has ended."""
        path = self.run_dir / RESULT
        if path.is_file():
            data = json.loads(path.read_text())
            for name in ("status", "final_val_loss", "best_val_loss", "final_train_loss", "tokens", "steps", "wall_s", "error"):
                if name in data:
                    setattr(self, name, data[name] if data[name] is not None else math.nan)
        return self

    def conclude(self, status: str, wall_s: float, error: str = "") -> None:
        """Read the outcome from the run's metrics and write ``experiment.json`` (atomically, last)."""
        from data_prep.fsutil import atomic_write_bytes

        self._metrics = None
        _, val = self.series("val_loss")
        _, train = self.series("loss")
        last = self.metrics()[-1] if self.metrics() else {}
        self.status, self.wall_s, self.error = status, wall_s, error
        finite = [v for v in val if math.isfinite(v)]
        diverged = status == "diverged"
        self.final_val_loss = math.nan if diverged or not val else val[-1]
        self.best_val_loss = math.nan if diverged or not finite else min(finite)
        self.final_train_loss = math.nan if diverged or not train else train[-1]
        self.tokens, self.steps = int(last.get("tokens", 0)), int(last.get("step", 0))
        data = {k: v for k, v in self.row().items() if k in (
            "status", "final_val_loss", "best_val_loss", "final_train_loss", "tokens", "steps", "wall_s", "error",
            "label", "key")}
        data = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}
        atomic_write_bytes(self.run_dir / RESULT, (json.dumps(data, indent=2) + "\n").encode())


@dataclass
class StudyResults:
    """The runs of a study, by label, for its report."""

    study: Study
    records: dict[str, RunRecord]
    out: Path

    def __getitem__(self, label: str) -> RunRecord:
        return self.records[label]

    def select(self, **params: Any) -> list[RunRecord]:
        """The runs whose params match every given value."""
        return [r for r in self.records.values() if all(r.spec.params.get(k) == v for k, v in params.items())]

    def values(self, key: str) -> list[Any]:
        """The distinct values of param ``key``, in the order the study lists them."""
        seen: list[Any] = []
        for r in self.records.values():
            v = r.spec.params.get(key)
            if key in r.spec.params and v not in seen:
                seen.append(v)
        return seen


# -- curves.csv: every run's curve, small enough to commit ------------------------------------------

CURVES = "curves.csv"
CURVE_COLUMNS = ("key", "parent", "step", "loss", "val_loss", "lr")


def _round(value: Any, digits: int) -> str:
    """A finite number to ``digits`` significant digits; empty for a missing or non-finite value."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return f"{float(value):.{digits}g}"


def write_curves(path: Path, records: list[RunRecord], keys: dict[str, str]) -> Path:
    """One row per logged record (a record with a training or validation loss) of each run: its key, its parent's
    key (empty for a root), step, loss and val_loss (6 significant digits), lr (4). A branch's rows start after its
    branch step, so splicing a branch's rows onto its parent's up to ``branch_step`` (``runs.csv``) gives its whole
    curve. A run that two labels share (the same config: one key, trained once) is written once. Written atomically;
    runs in a stable order (by key), so a rerun gives the same bytes."""
    import io

    from data_prep.fsutil import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    written: set[str] = set()
    for rec in sorted(records, key=lambda r: r.key):
        if rec.key in written:
            continue
        written.add(rec.key)
        parent = keys.get(rec.spec.parent, "") if rec.spec.parent else ""
        start = rec.spec.branch_step or 0
        for m in rec.metrics():
            step = int(m["step"])
            if step <= start and rec.spec.parent:
                continue
            loss, val = m.get("loss"), m.get("val_loss")
            if loss is None and val is None:
                continue
            writer.writerow((rec.key, parent, step, _round(loss, 6), _round(val, 6), _round(m.get("lr"), 4)))
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_curves(path: Path) -> dict[str, dict[str, list]]:
    """``curves.csv`` back: run key -> {"parent": key or "", "step": [...], "loss": [...], "val_loss": [...],
    "lr": [...]} (NaN where a value is absent). A file without the expected columns is an error naming it."""
    out: dict[str, dict[str, list]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CURVE_COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(CURVE_COLUMNS)}, got {reader.fieldnames}")
        for row in reader:
            c = out.setdefault(row["key"], {"parent": row["parent"], "step": [], "loss": [], "val_loss": [], "lr": []})
            c["step"].append(int(row["step"]))
            for col in ("loss", "val_loss", "lr"):
                c[col].append(float(row[col]) if row[col] else math.nan)
    return out


# -- planning a run's overrides ---------------------------------------------------------------------

def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def launch_overrides(study: Study, run: RunSpec, out: Path, checkpoint_minutes: float,
                     dirs: dict[str, Path] | None = None) -> list[str]:
    """The run's overrides plus where it writes, what it keeps for its branches, and where it branches from.
    ``dirs``: run directories by label where they are not ``OUT/runs/<key>`` (runs reused from another study)."""
    key = study.key(run)
    dirs = dirs or {}
    extra = [f"run_dir={dirs.get(run.label, out / 'runs' / key)}", f"name={study.name}-{key}",
             "checkpoint.interval=0", f"checkpoint.interval_minutes={checkpoint_minutes}", "checkpoint.keep_last=1",
             "logging.plot=false"]
    steps = sorted({c.branch_step for c in study.children(run)} | set(run.keep))
    if steps:
        extra.append(f"checkpoint.permanent=[{','.join(map(str, steps))}]")
    if run.parent is not None:
        parent_dir = dirs.get(run.parent, out / "runs" / study.key(study.spec(run.parent)))
        extra.append(f"checkpoint.branch_from={checkpoint_dir(parent_dir, run.branch_step)}")
    if run.init_from is not None:  # the weights only (a fresh optimizer, schedule and step counter)
        init_dir = dirs.get(run.init_from, out / "runs" / study.key(study.spec(run.init_from)))
        extra.append(f"checkpoint.init_from={checkpoint_dir(init_dir, run.init_step)}")
    return list(run.overrides) + extra


def find_run_dir(out: Path, key: str) -> Path:
    """``OUT/runs/<key>``, or a finished run of the same name in a sibling study's output (``OUT/../*/runs/<key>``):
    a run is never trained twice, whichever study asked for it first."""
    own = out / "runs" / key
    if not (own / RESULT).is_file() and out.parent.is_dir():
        for other in sorted(out.parent.glob(f"*/runs/{key}/{RESULT}")):
            if other.parent.parent.parent != out:
                return other.parent
    return own


# -- execution ---------------------------------------------------------------------------------------

def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_slots(threads_per_run: int = 0) -> int:
    """Runs at a time on this machine: its cores at ``threads_per_run`` threads per run (default
    ``$PRETRAIN_THREADS``, else 1: a study's small models gain more from runs side by side than from threads),
    and no more standing workers than its available memory holds (``WORKER_MEMORY_GB`` each)."""
    if threads_per_run < 1:
        try:
            threads_per_run = max(1, int(os.environ.get("PRETRAIN_THREADS") or 1))
        except ValueError:
            threads_per_run = 1
    slots = max(1, _cores() // threads_per_run)
    try:
        import psutil

        slots = min(slots, max(1, int(psutil.virtual_memory().available / 2**30 // WORKER_MEMORY_GB)))
    except ImportError:  # pragma: no cover  (psutil comes with DeepSpeed)
        pass
    return slots


def _status(code: int) -> str:
    """A run's status from the exit code ``python pretrain.py`` gives (or gave)."""
    return {0: "done", EXIT_UNSTABLE: "diverged", EXIT_INCOMPLETE: "interrupted"}.get(code, "failed")


@dataclass
class _Busy:
    """A slot's current run: in the slot's standing worker, or in its own process (``proc``, ``log``)."""

    rec: RunRecord
    t0: float
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_step(run_dir: Path) -> int:
    """The step of the last record in ``metrics.jsonl`` (0 if none), reading only its end."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class Runner:
    """Runs what a study still needs, in dependency order, and collects every run's outcome."""

    def __init__(self, study: Study, out: Path, *, slots: int = 1, gpus: int = 0, checkpoint_minutes: float = 2.0,
                 total_steps: dict[str, int] | None = None, progress: bool = True, standing: bool = True):
        self.study, self.out = study, Path(out)
        self.slots = max(1, gpus or slots)
        self.gpus = gpus
        self.standing = standing  # K > 1: standing workers (False: a process per run)
        self.workers: dict[int, Any] = {}  # slot -> experiments.worker.Worker, started on first use
        self._results_dir: Path | None = None
        self.worker_processes = self.worker_runs = 0  # worker processes started (replacements too), runs handed to them
        self.checkpoint_minutes = checkpoint_minutes
        self.total_steps = total_steps or {}
        self.progress = progress
        self.records = {r.label: RunRecord(r, study.key(r), find_run_dir(self.out, study.key(r))).load() for r in study.runs}
        self.dirs = {label: rec.run_dir for label, rec in self.records.items()}

    # The run's steps trained by this study (a branch's steps before its branch point are its parent's).
    def _own_steps(self, rec: RunRecord, step: int) -> int:
        return max(0, step - (rec.spec.branch_step or 0))

    def run(self) -> StudyResults:
        self.out.mkdir(parents=True, exist_ok=True)
        todo = [r for r in self.records.values() if not r.finished]
        if todo:
            self._clean_stale_shared_memory()
        bar, stop = self._progress()
        try:
            for wave in self.study.waves():
                pending = [self.records[s.label] for s in wave if not self.records[s.label].finished]
                ready = []
                for rec in pending:
                    parent = self.records.get(rec.spec.parent or rec.spec.init_from or "")
                    if parent is not None and parent.status != "done":
                        rec.status, rec.error = "skipped", f"its parent {parent.spec.label!r} is {parent.status}"
                    else:
                        ready.append(rec)
                if self.slots == 1:
                    for rec in ready:
                        self._run_in_process(rec)
                else:
                    self._run_processes(ready)
        finally:
            stop.set()
            self.close()
            if bar is not None:
                bar.refresh()
                bar.close()
            self.write_csv()
        return StudyResults(self.study, self.records, self.out)

    def results(self) -> StudyResults:
        """The runs as they are, without training: a run that reached its last step elsewhere (a SLURM array
        job) is concluded from its metrics."""
        for rec in self.records.values():
            own = self.total_steps.get(rec.spec.label)
            if not rec.finished and own and _last_step(rec.run_dir) >= own + (rec.spec.branch_step or 0):
                rec.conclude("done", 0.0)
        self.write_csv()
        return StudyResults(self.study, self.records, self.out)

    def write_csv(self) -> Path:
        import io

        from data_prep.fsutil import atomic_write_bytes

        rows = [r.row() for r in self.records.values()]
        names: list[str] = []
        for row in rows:
            names += [k for k in row if k not in names]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
        path = self.out / "runs.csv"
        atomic_write_bytes(path, buf.getvalue().encode())
        self.write_curves()
        return path

    def write_curves(self) -> Path:
        """``OUT/curves.csv`` beside ``runs.csv``: every logged record of every ended run (:func:`write_curves`)."""
        keys = {label: rec.key for label, rec in self.records.items()}
        return write_curves(self.out / CURVES, [r for r in self.records.values() if r.finished], keys)

    # -- one run in this process --------------------------------------------------------------------

    def _run_in_process(self, rec: RunRecord) -> None:
        from .worker import output_to, run_one

        rec.run_dir.mkdir(parents=True, exist_ok=True)
        overrides = launch_overrides(self.study, rec.spec, self.out, self.checkpoint_minutes, self.dirs)
        t0 = time.time()
        with output_to(rec.run_dir / "train.log"):
            code, error = run_one(str(self.study.config), overrides)
        self._finish(rec, _status(code), time.time() - t0, error)

    # -- K runs at a time: standing workers, or a process per run ------------------------------------

    def _command(self, rec: RunRecord) -> list[str]:
        overrides = launch_overrides(self.study, rec.spec, self.out, self.checkpoint_minutes, self.dirs)
        return [sys.executable, str(REPO / "pretrain.py"), "--config", str(self.study.config), *overrides]

    def threads(self) -> int:
        """Intra-op threads per run: this process's cores divided among the slots (one core at least)."""
        return max(1, _cores() // self.slots)

    def _env(self, slot: int) -> dict[str, str]:
        """The environment of a slot's runs, the same for a worker and a process per run (same results)."""
        env = dict(os.environ, PRETRAIN_THREADS=str(self.threads()), PYTHONUNBUFFERED="1")
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        return env

    def _worker(self, slot: int):
        from .worker import Worker

        if slot not in self.workers:
            if self._results_dir is None:
                self._results_dir = Path(tempfile.mkdtemp(prefix="study-workers-"))
            self.workers[slot] = Worker(self._env(slot), self.out / "workers" / f"slot{slot}.log", self._results_dir)
        return self.workers[slot]

    def _start(self, slot: int, rec: RunRecord) -> _Busy:
        rec.run_dir.mkdir(parents=True, exist_ok=True)
        log = rec.run_dir / "train.log"
        if self.standing and not rec.spec.isolated:
            overrides = launch_overrides(self.study, rec.spec, self.out, self.checkpoint_minutes, self.dirs)
            self._worker(slot).submit(self.study.config, overrides, log)
            return _Busy(rec, time.time())
        f = open(log, "ab")
        proc = subprocess.Popen(self._command(rec), cwd=REPO, env=self._env(slot), stdout=f, stderr=subprocess.STDOUT)
        return _Busy(rec, time.time(), proc, f)

    def _poll(self, slot: int, busy: _Busy) -> tuple[int, str, bool] | None:
        """(exit code, error, whether its worker died) once the slot's run ended, else None."""
        if busy.proc is None:
            got = self.workers[slot].poll()
            if got is None:
                return None
            return int(got["code"]), got.get("error", ""), bool(got.get("died"))
        code = busy.proc.poll()
        if code is None:
            return None
        busy.log.close()
        return code, "", False

    def _run_processes(self, ready: list[RunRecord]) -> None:
        queue = list(ready)
        running: dict[int, _Busy] = {}
        free = list(range(self.slots))
        retried: set[str] = set()
        try:
            while queue or running:
                while queue and free:
                    slot, rec = free.pop(0), queue.pop(0)
                    running[slot] = self._start(slot, rec)
                    if queue and free:
                        time.sleep(1.0)  # staggered starts: the data loaders' shared memory is named as they start
                time.sleep(0.1)
                for slot, busy in list(running.items()):
                    ended = self._poll(slot, busy)
                    if ended is None:
                        continue
                    code, error, died = ended
                    rec = busy.rec
                    del running[slot]
                    free.append(slot)
                    status = _status(code)
                    if status != "done":
                        tail = _tail(rec.run_dir / "train.log", 5)
                        error = f"exit code {code}: {error + chr(10) if error else ''}{tail}"
                    if status not in ("done", "diverged") and slot in self.workers and busy.proc is None:
                        self.workers[slot].close()  # a worker whose run failed is replaced (it may be in a bad state)
                    if status == "failed" and rec.spec.label not in retried and (died or "FileExistsError" in error):
                        # its worker died (killed, out of memory) or mosaicml-streaming handed two loaders starting
                        # at once the same shared-memory name: once more, resuming from its last checkpoint
                        retried.add(rec.spec.label)
                        queue.append(rec)
                        continue
                    self._finish(rec, status, time.time() - busy.t0, error)
        finally:
            # Interrupted (or a run was): the other runs save and stop (SIGTERM, exit 75), then the workers end.
            for slot, busy in running.items():
                if busy.proc is not None:
                    busy.proc.terminate()
                else:
                    self.workers[slot].stop_run()
            for slot, busy in running.items():
                if busy.proc is not None:
                    try:
                        busy.proc.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        busy.proc.kill()
                        busy.proc.wait()
                    busy.log.close()
                else:
                    self.workers[slot].wait(timeout=120)
                    self.workers[slot].close()

    def close(self) -> None:
        """End the standing workers."""
        import shutil

        for worker in self.workers.values():
            worker.close()
            self.worker_processes += worker.started
            self.worker_runs += worker.runs
        self.workers.clear()
        if self._results_dir is not None:
            shutil.rmtree(self._results_dir, ignore_errors=True)
            self._results_dir = None

    def _finish(self, rec: RunRecord, status: str, wall_s: float, error: str) -> None:
        if status == "interrupted":
            raise StudyInterrupted(f"run {rec.spec.label} was stopped and saved; rerun the same command to continue")
        if status in ("done", "diverged"):
            rec.conclude(status, wall_s, error)
        else:
            rec.status, rec.wall_s, rec.error = status, wall_s, error
            print(f"\nrun {rec.spec.label} ({rec.key}) failed: {error}\n  log: {rec.run_dir / 'train.log'}",
                  file=sys.stderr, flush=True)

    # -- shared memory and progress -------------------------------------------------------------------

    def _clean_stale_shared_memory(self) -> None:
        """Once, before any run: what killed data loaders left behind. Only segments no live process maps are
        removed (:func:`pretrain.data.clean_stale_shared_memory`), so other jobs on the machine keep theirs; the
        runs' loaders are created under the same machine-wide lock as every other run's."""
        from pretrain.data import clean_stale_shared_memory

        clean_stale_shared_memory()

    def _progress(self):
        stop = threading.Event()
        total = sum(self.total_steps.get(label, 0) for label in self.records)
        if not self.progress or not total:
            return None, stop
        from tqdm import tqdm

        def done_steps() -> int:
            n = 0
            for rec in self.records.values():
                if rec.finished:
                    n += self.total_steps.get(rec.spec.label, 0)
                elif rec.run_dir.is_dir():
                    n += self._own_steps(rec, _last_step(rec.run_dir))
            return min(n, total)

        stream = os.fdopen(os.dup(2), "w")  # the terminal, even while a run's output goes to its log
        bar = tqdm(total=total, initial=done_steps(), unit="step", desc=self.study.name, file=stream,
                   dynamic_ncols=True, smoothing=0.05)  # the rate and ETA count only what this invocation trains

        def poll() -> None:
            while not stop.wait(2.0):
                bar.update(done_steps() - bar.n)

        threading.Thread(target=poll, daemon=True).start()
        return bar, stop
