"""A study's fixed cost per run: standing workers against one process per run (issue #23).

Runs the same small study twice on this machine, in one go: ``--seeds`` runs at each of two lengths
(``--steps``, default 10 and 60 updates of the tiny model), ``--slots`` at a time, first in standing workers
(``experiments.runner.Runner(standing=True)``), then as one ``python pretrain.py`` process per run
(``standing=False``). For each it fits every run's wall time as ``a + b x steps`` (Theil-Sen,
``scipy.stats.theilslopes``) and prints the fixed cost ``a`` per run, the cost ``b`` per step, the fixed share
(``a x runs / sum of the runs' wall times``) and the study's elapsed time.

``--breakdown`` also measures where one run's fixed time goes, in this process after a warm-up run (what a
standing worker pays per run): engine set-up, data loaders, evaluations, saves, the loss plot, tear-down; and,
in fresh interpreters, the imports and the interpreter's start and exit (what a process per run adds).

    python bench/study_overhead.py                      # tiny data made in a temporary directory
    python bench/study_overhead.py --data data/tiny/tokens --seeds 8 --slots 2 --breakdown
    python bench/study_overhead.py --refit runs/studies/d2z-cpu/runs.csv   # the same fit over a study's own runs

``--refit`` fits a finished study's ``runs.csv`` the same way (a branch counts the updates it trained itself, its
steps less its branch step) and runs nothing.

Nothing is written outside a temporary directory, which is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.cli_numbers import integer  # noqa: E402

CONFIG = ROOT / "configs" / "demo_cpu.yaml"


def _steps(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two step counts, e.g. 10,60") from None
    if not (1 <= a < b):
        raise argparse.ArgumentTypeError(f"{text!r}: expected two step counts 1 <= SHORT < LONG")
    return a, b


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="MDS token directory (seq 64); default: tiny data made here")
    p.add_argument("--seeds", type=integer(3), default=6, help="runs at each length, >= 3 (default 6: 12 runs)")
    p.add_argument("--steps", type=_steps, default=(10, 60), help="the two run lengths in updates (default 10,60)")
    p.add_argument("--slots", type=integer(1), default=2, help="runs at a time, >= 1 (default 2)")
    p.add_argument("--breakdown", action="store_true", help="also time the parts of one run's fixed cost")
    p.add_argument("--refit", type=Path, default=None, metavar="RUNS_CSV",
                   help="fit a finished study's runs.csv the same way instead of running a study")
    args = p.parse_args(argv)
    if args.data is not None and not (args.data / "train").is_dir():
        p.error(f"--data {args.data}: expected an MDS token directory with a train/ split (python -m data_prep tokenize)")
    return args


def make_tiny_data(root: Path) -> Path:
    """1 MB of the demo corpus, a 512-piece tokenizer, MDS shards of 64+1 tokens (as tests/conftest.py)."""
    from data_prep.__main__ import main

    for args in (["demo-corpus", "--output", str(root / "raw"), "--max-mb", "1"],
                 ["train-tokenizer", "--input", str(root / "raw"), "--output", str(root / "tok.model"), "--vocab-size", "512"],
                 ["tokenize", "--input", str(root / "raw"), "--output", str(root / "tokens"), "--tokenizer",
                  str(root / "tok.model"), "--seq-len", "64", "--val-fraction", "0.05", "-q"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(args)
        if code != 0:
            raise SystemExit(f"data_prep {args[0]} failed (exit {code})")
    return root / "tokens"


def base_overrides(data: Path) -> list[str]:
    return ["model.preset=tiny", f"data.path={data}", "train.global_batch_size=8", "train.micro_batch_size=8",
            "eval.interval=0", "eval.max_samples=32", "logging.interval=10", "logging.tensorboard=false"]


def make_study(data: Path, seeds: int, steps: tuple[int, int]):
    from experiments.study import RunSpec, Study

    runs = [RunSpec(f"steps{n}/seed{s}", tuple(base_overrides(data) + [f"train.max_steps={n}", f"train.seed={s}"]),
                    {"steps": n, "seed": s}) for n in steps for s in range(seeds)]
    return Study("overhead", CONFIG, runs, report=lambda results, out: "")


def fit(results) -> dict[str, float]:
    """Theil-Sen fit of each run's wall time as a + b x steps over the study's runs."""
    recs = [r for r in results.records.values() if r.status == "done"]
    if len(recs) != len(results.records):
        bad = [f"{r.spec.label}: {r.status} {r.error}" for r in results.records.values() if r.status != "done"]
        raise SystemExit("runs failed:\n  " + "\n  ".join(bad))
    return fit_times([r.spec.params["steps"] for r in recs], [r.wall_s for r in recs])


def refit(path: Path) -> dict[str, float]:
    """:func:`fit_times` over a finished study's ``runs.csv``: its done runs, each with the updates it trained."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("status") == "done"]
        x = [int(r["steps"]) - int(r["branch_step"] or 0) for r in rows]
        y = [float(r["wall_s"]) for r in rows]
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"{path}: expected a study's runs.csv (status, steps, branch_step, wall_s): {e}") from None
    if len(rows) < 3 or len(set(x)) < 2 or not all(math.isfinite(v) and v >= 0 for v in y):
        raise SystemExit(f"{path}: needs >= 3 done runs of >= 2 lengths with finite wall times ({len(rows)} done)")
    return fit_times(x, y)


def fit_times(x, y) -> dict[str, float]:
    from scipy.stats import theilslopes

    b, a, _, _ = theilslopes(y, x)
    total = sum(y)
    return {"a": a, "b": b, "share": a * len(y) / total if total > 0 else math.nan, "runs": len(y), "sum": total}


def run_study(study, out: Path, slots: int, standing: bool):
    from experiments.runner import Runner

    t0 = time.perf_counter()
    results = Runner(study, out, slots=slots, standing=standing, progress=False).run()
    return results, time.perf_counter() - t0


# -- where one run's fixed time goes -----------------------------------------------------------------

def _timed(owner, name: str, totals: dict[str, float], label: str):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)
    return original


def breakdown(data: Path, work: Path) -> list[tuple[str, float]]:
    """Seconds per part of one warm in-process run of the short length (what a standing worker pays per run)."""
    import pretrain.plot
    import pretrain.trainer as T
    from pretrain.checkpoint import CheckpointSaver
    from pretrain.training.evaluate import EvalCallback

    def one(i: int) -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            T.train(CONFIG, base_overrides(data) + ["train.max_steps=10", f"run_dir={work / f'b{i}'}"])
        return time.perf_counter() - t0

    import gc

    one(0)  # warm-up: what stays loaded after a run
    gc.collect()
    gc.freeze()  # as a standing worker does between runs: the heap from before stays out of the run's gc walks
    totals: dict[str, float] = {}
    patches = [(T, "build_engine", "engine set-up (deepspeed.initialize)"),
               (T.Trainer, "_setup_data", "data loaders"),
               (EvalCallback, "metrics", "evaluations (step 0 and the end)"),
               (CheckpointSaver, "save", "checkpoint saves"),
               (pretrain.plot, "plot_run", "loss plot"),
               (T.Trainer, "close", "tear-down (engine, loaders, shared memory)"),
               (T.Trainer, "setup", "set-up in all (engine, loaders, model, run files)"),
               (T.Trainer, "_loop", "training loop in all (10 steps + evaluations + saves)")]
    originals = [(owner, name, _timed(owner, name, totals, label)) for owner, name, label in patches]
    try:
        wall = one(1)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        gc.unfreeze()
    rows = [(label, totals.get(label, 0.0)) for _, _, label in patches]
    rows.append(("the whole in-process run (train())", wall))

    # What a process per run adds: the interpreter, the imports, the exit (fresh interpreters, best of 2).
    def fresh(code: str) -> float:
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
            best = min(best, time.perf_counter() - t0)
        return best

    bare = fresh("pass")
    imports = fresh("import torch, deepspeed, streaming, pretrain.trainer, pretrain.main")
    rows += [("process: interpreter start and exit", bare),
             ("process: imports (torch, deepspeed, streaming, pretrain) incl. their exit", imports - bare)]
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.refit is not None:
        f = refit(args.refit)
        print(f"{args.refit}: {f['runs']} done runs, fixed a = {f['a']:.2f} s/run, b = {1000 * f['b']:.1f} ms/step, "
              f"fixed share {100 * f['share']:.1f}% of {f['sum'] / 60:.1f} min of run time")
        return 0
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with tempfile.TemporaryDirectory(prefix="study_overhead_") as tmp:
        work = Path(tmp)
        data = args.data or make_tiny_data(work / "data")
        study = make_study(data, args.seeds, args.steps)
        print(f"study: {len(study.runs)} runs ({args.seeds} x {args.steps[0]} and {args.seeds} x {args.steps[1]} updates "
              f"of the tiny model), {args.slots} at a time, on {len(os.sched_getaffinity(0))} cores", flush=True)
        fits = {}
        for name, standing in (("standing workers", True), ("a process per run", False)):
            # each in a directory of its own: a study reuses the finished runs of its sibling directories
            results, elapsed = run_study(study, work / name.replace(" ", "_") / "study", args.slots, standing)
            fits[name] = fit(results) | {"elapsed": elapsed}
        print(f"\n{'':20} {'fixed a/run':>12} {'b/step':>9} {'fixed share':>12} {'sum of runs':>12} {'elapsed':>9}")
        for name, f in fits.items():
            print(f"{name:20} {f['a']:>10.2f} s {1000 * f['b']:>6.1f} ms {100 * f['share']:>11.0f}% "
                  f"{f['sum']:>10.1f} s {f['elapsed']:>7.1f} s")
        w, p = fits["standing workers"], fits["a process per run"]
        print(f"\nstanding workers save {p['a'] - w['a']:.2f} s of fixed cost per run; the study takes "
              f"{w['elapsed'] / p['elapsed']:.2f}x the elapsed time of a process per run")
        if args.breakdown:
            print("\none warm in-process run of", args.steps[0], "updates, by part (seconds; parts overlap where nested):")
            for label, seconds in breakdown(data, work / "breakdown"):
                print(f"  {label:72} {seconds:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
