"""``--emit-slurm``: the study's unfinished runs as SLURM array jobs, one per wave of branches.

Wave 0 holds the runs that start from scratch, wave 1 the branches of wave-0 runs, and so on. Each array task
runs one run through ``launch_scripts/slurm_pretrain.sbatch`` (srun over the task's nodes, requeued when
preempted, resumed from its checkpoints); ``submit.sh`` submits the waves with ``afterok`` dependencies.
Afterwards ``python -m experiments STUDY --report-only`` (same flags) collects the runs and writes the report.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .runner import RESULT, launch_overrides
from .study import Study

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "launch_scripts" / "slurm_pretrain.sbatch"


def _sbatch_header() -> list[str]:
    """The resource lines of the single-run script (nodes, GPUs, time, signal, requeue), for every array task."""
    return [line for line in SBATCH.read_text().splitlines()
            if line.startswith("#SBATCH") and "--output" not in line and "--job-name" not in line]


def emit(study: Study, out: Path, checkpoint_minutes: float = 10.0) -> list[Path]:
    out = Path(out).resolve()
    root = out / "slurm"
    root.mkdir(parents=True, exist_ok=True)
    written, jobs = [], []
    for i, wave in enumerate(study.waves()):
        todo = [r for r in wave if not (out / "runs" / study.key(r) / RESULT).is_file()]
        if not todo:
            continue
        lines = [shlex.join([str(study.config), *launch_overrides(study, r, out, checkpoint_minutes)]) for r in todo]
        runs = root / f"wave{i}.txt"
        runs.write_text("\n".join(lines) + "\n")
        script = root / f"wave{i}.sbatch"
        script.write_text("\n".join([
            "#!/bin/bash",
            f"# Study {study.name}, wave {i}: {len(todo)} runs, one per array task (lines of {runs.name}).",
            f"#SBATCH --job-name={study.name}-w{i}",
            f"#SBATCH --array=0-{len(todo) - 1}",
            f"#SBATCH --output={root}/%x-%A_%a.out",
            *_sbatch_header(),
            "set -euo pipefail",
            f'line="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(runs))})"',
            'eval "set -- $line"',
            f"cd {shlex.quote(str(REPO))}",
            f'exec bash {shlex.quote(str(SBATCH))} "$@"',
            "",
        ]))
        written += [runs, script]
        jobs.append(script)
    submit = root / "submit.sh"
    body = ["#!/bin/bash", "# Submit the waves in order; each starts when the one before has finished.", "set -euo pipefail",
            "dep=()"]
    for script in jobs:
        body += [f'id=$(sbatch --parsable "${{dep[@]}}" {shlex.quote(str(script))})', 'echo "submitted $id"',
                 'dep=(--dependency=afterok:"${id%%;*}")']
    submit.write_text("\n".join(body) + "\n")
    submit.chmod(0o755)
    return written + [submit]

