"""``python -m experiments STUDY [--scale cpu|full|tiny] [--seeds N] [--slots K] [--dry-run] [--out DIR] ...``

Runs a study of the papers in ``../shared/papers`` (``skiplr``, ``d2z``, ``wsd``, ``forecast``), resumably:
rerunning the same command skips finished runs and resumes the others from their checkpoints. Then writes
``runs.csv``, ``report.md`` and the figures into ``--out`` (default ``runs/studies/STUDY-SCALE``).

    python -m experiments list
    python -m experiments d2z --dry-run                  # every run: size, tokens, TPP, FLOPs, time, aT, c_T0, epochs
    python -m experiments d2z --slots 2                  # two runs at a time, one core each
    python -m experiments d2z --scale full --emit-slurm  # an array job per wave for launch_scripts/slurm_pretrain.sbatch
    python -m experiments skiplr --seeds 5 --set optimizer.lr=0.5   # KEY=VALUE on every run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pretrain.cli_numbers import integer, number

from . import STUDIES, build_study


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="a study (" + ", ".join(STUDIES) + "), or 'list'")
    p.add_argument("--scale", default="cpu", choices=("tiny", "cpu", "full"),
                   help="cpu: minutes to an hour on 2 cores (default); full: the papers' sizes; tiny: a smoke test")
    p.add_argument("--variant", default=None,
                   help="a study's variant (skiplr: pretrained, the default, or scratch); output in STUDY-VARIANT-SCALE")
    p.add_argument("--seeds", type=integer(1), default=None, help="seeds per arm, >= 1 (default: the study's, per scale)")
    p.add_argument("--slots", type=integer(1), default=None,
                   help="runs at a time, >= 1; 1 runs in this process, K > 1 in K standing worker processes with the "
                        "cores divided (default: this machine's cores at $PRETRAIN_THREADS or 1 thread per run, "
                        "as many as its memory holds)")
    p.add_argument("--gpus", type=integer(0), default=0, help="one run per GPU on this node (overrides --slots); 0: none")
    p.add_argument("--full-grid", action="store_true",
                   help="the study's whole grid at this scale (d2z at cpu scale: 8 schedules x 6 LRs x 2, 5, 20 TPP)")
    p.add_argument("--dry-run", action="store_true", help="print every run and its cost; train nothing")
    p.add_argument("--no-calibrate", action="store_true", help="dry run without timing the models here")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/studies/STUDY-SCALE)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run of the study (repeatable), e.g. data.path=/data/tokens")
    p.add_argument("--emit-slurm", action="store_true", help="write SLURM array jobs for the runs instead of running")
    p.add_argument("--checkpoint-minutes", type=number(0), default=2.0,
                   help="save each run this often, so a killed study loses at most this much (default 2; 0: off)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs; train nothing")
    args = p.parse_args(argv)
    if args.slots is None:
        from .runner import default_slots

        args.slots = default_slots()
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"--set expects KEY=VALUE, got {bad}")
    return args


def check_out(study, out: Path) -> None:
    """The output rule (:func:`pretrain.outputs.check_disjoint`): the study's directory is not, does not contain and
    does not lie inside what its runs read: the base config, the data directory and the tokenizer."""
    from pretrain.outputs import check_disjoint

    inputs: dict[str, Path] = {"study config": Path(study.config)}
    if study.runs:
        data = study.load_config(study.runs[0]).data
        if "://" not in data.path:
            inputs["data directory (data.path)"] = Path(data.path)
        if data.tokenizer:
            inputs["tokenizer (data.tokenizer)"] = Path(data.tokenizer)
    check_disjoint(out, inputs, "--out")


def main(argv: Sequence[str] | None = None) -> int:
    from pretrain.config_loader import ConfigError

    args = parse_args(argv)
    if args.study == "list":
        for name, module in STUDIES.items():
            print(f"{name:10} {module.__doc__.strip().splitlines()[0] if module.__doc__ else ''}")
        return 0
    if args.study not in STUDIES:
        print(f"error: unknown study {args.study!r}; known: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    out = args.out or Path("runs/studies") / "-".join(x for x in (args.study, args.variant, args.scale) if x)
    try:
        study = build_study(args.study, args.scale, seeds=args.seeds, overrides=args.overrides, out=out,
                            full_grid=args.full_grid, variant=args.variant)
        check_out(study, out)
        from .estimate import duration, plan, table, warnings

        study_plan = plan(study, slots=args.gpus or args.slots, calibrate=not (args.no_calibrate or args.emit_slurm
                                                                                   or args.report_only))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.dry_run or args.emit_slurm:
        print(f"study {study.name} ({args.scale}): {len(study.runs)} runs on {study.config}")
        print(f"  {study_plan.data_note}")
        print(table(study_plan))
        total_flops = sum(r.flops for r in study_plan.runs)
        slots = args.gpus or args.slots
        print(f"total: {total_flops:.3g} FLOPs; estimated {duration(study_plan.seconds / slots)} on this machine "
              f"with {slots} slot{'s' * (slots > 1)}" if study_plan.seconds else f"total: {total_flops:.3g} FLOPs")
        bases = sorted({r.time_basis for r in study_plan.runs if r.time_basis})
        if bases:
            print("time: " + "; ".join(bases) + " (a step of each model timed here, plus set-up per run)")
        for line in warnings(study_plan) + [f"note: {n}" for n in study.notes]:
            print(line)
        if args.emit_slurm:
            from .slurm import emit

            for path in emit(study, out, args.checkpoint_minutes):
                print(f"wrote {path}")
        return 0

    import signal

    def _stop(signum, frame):  # SIGTERM (a scheduler, kill): stop like Ctrl-C, so running runs save and stop too
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _run(args, study, study_plan, out)
    finally:
        signal.signal(signal.SIGTERM, previous)  # as it was: main() may be called in a process that goes on


def _run(args, study, study_plan, out) -> int:
    """Train the study's runs (again while it grows: forecast), then write its report; 75 when stopped."""
    from .estimate import plan
    from .runner import Runner, StudyInterrupted

    while True:
        runner = Runner(study, out, slots=args.slots, gpus=args.gpus, checkpoint_minutes=args.checkpoint_minutes,
                        total_steps=study_plan.steps())
        print(f"study {study.name} ({args.scale}): {len(study.runs)} runs, "
              f"{sum(not r.finished for r in runner.records.values())} to train; output in {out}", flush=True)
        try:
            results = runner.run() if not args.report_only else runner.results()
        except (StudyInterrupted, KeyboardInterrupt) as e:
            print(f"\nstopped: {e or 'interrupted'}; rerun the same command to continue", file=sys.stderr)
            return 75
        if not study.dynamic or args.report_only:
            break
        again = build_study(args.study, args.scale, seeds=args.seeds, overrides=args.overrides, out=out,
                            full_grid=args.full_grid, variant=args.variant)  # runs that depend on the finished ones (forecast: the optimum)
        if {r.label for r in again.runs} <= {r.label for r in study.runs}:
            break
        study, study_plan = again, plan(again, slots=args.gpus or args.slots, calibrate=False)
    from .report import write_report

    path = write_report(results, study_plan)
    print(f"wrote {out / 'runs.csv'} and {path}")
    failed = [r for r in results.records.values() if r.status in ("failed", "skipped")]
    for r in failed:
        print(f"  {r.status}: {r.spec.label}: {r.error.splitlines()[0] if r.error else ''}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
