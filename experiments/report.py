"""``report.md``: what was run, on what, for how long, then the study's own tables, verdicts and figures."""

from __future__ import annotations

import datetime
import math
import platform
from pathlib import Path

from .estimate import StudyPlan, duration
from .runner import StudyResults


def machine_line() -> str:
    import torch

    from pretrain.hardware import detect

    hw = detect()
    if hw.device == "cuda":
        return f"{hw.gpu_name} (CUDA), torch {torch.__version__}"
    flags = [name for name, on in (("AMX", hw.amx_bf16), ("AVX512_BF16", hw.avx512_bf16)) if on]
    return (f"{platform.processor() or platform.machine()}, {hw.cores} cores, torch CPU capability "
            f"{hw.cpu_capability}{' with ' + '+'.join(flags) if flags else ''}, torch {torch.__version__}")


def write_report(results: StudyResults, plan: StudyPlan) -> Path:
    study, out = results.study, results.out
    recs = list(results.records.values())
    counts = {s: sum(r.status == s for r in recs) for s in ("done", "diverged", "failed", "skipped", "pending")}
    wall = sum(r.wall_s for r in recs)
    lines = [
        f"# Study `{study.name}`",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on {machine_line()}.",
        f"Base config `{study.config}`; {len(recs)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".",
        f"Training wall time, summed over runs: {duration(wall)} (runs in parallel slots overlap). "
        f"Data: {plan.data_note}",
        "Every comparison is paired: runs with the same seed share their initialization and data order.",
        _corpus(study),
        "",
    ]
    lines += [f"- Note: {n}" for n in study.notes]
    if study.notes:
        lines.append("")
    lines += ["## Results", "", study.report(results, out).rstrip(), "", "## Runs", "",
              "One row per run in `runs.csv` (overrides, final and best validation loss, tokens, wall time, run directory).",
              ""]
    bad = [r for r in recs if r.status in ("failed", "skipped", "diverged")]
    for r in bad:
        lines.append(f"- {r.status}: `{r.spec.label}` {r.error.splitlines()[0] if r.error else ''}")
    path = out / "report.md"
    from data_prep.fsutil import atomic_write_bytes

    atomic_write_bytes(path, ("\n".join(lines).rstrip() + "\n").encode())
    return path


def _corpus(study) -> str:
    """The corpus line (:func:`experiments.corpus.corpus_line`): its sha256 and token counts, and whether it is the
    committed results' corpus."""
    from .corpus import corpus_line

    if not study.runs:
        return "Corpus: no runs."
    path = study.load_config(study.runs[0]).data.path
    if "://" in path:
        return f"Corpus `{path}`: remote, no fingerprint."
    return corpus_line(Path(path))


def fmt_loss(x: float, digits: int = 4) -> str:
    return "NaN" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"



