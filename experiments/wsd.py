"""WSD (paper 001 and D2Z section 4.3): cooldowns branched from one constant-LR run, against runs planned per budget.

One warmup-stable (constant LR) main run per seed. For each budget T_b it is branched at 0.8 T_b into cooldowns
over the last 20% (linear and 1-sqrt); each budget also gets a Linear-D2Z and a Linear-10x run planned for it,
with the same warmup, peak LR and seed. All are compared at equal tokens. The report gives the loss gaps, the
compute saved by branching, and a WSM merge of the main run's last checkpoints against a cooldown of equal length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .study import RunSpec, Study, fmt

REPO = Path(__file__).resolve().parent.parent
SHAPES = ("linear", "1-sqrt")
COOLDOWN = 0.2  # of each budget


@dataclass(frozen=True)
class Scale:
    config: Path
    seeds: int
    tpps: tuple[float, ...]
    lr: float = 1.6e-2
    warmup_fraction: float = 0.1  # of the smallest budget, the same steps in every run
    merge_checkpoints: int = 4  # WSM: checkpoints over the last COOLDOWN of the main run
    extra: tuple[str, ...] = ()


SCALES = {
    "cpu": Scale(REPO / "configs/studies/cpu.yaml", seeds=3, tpps=(5.0, 10.0, 20.0)),
    "tiny": Scale(REPO / "configs/studies/cpu.yaml", seeds=1, tpps=(0.06,),
                  extra=("train.global_batch_size=4", "train.micro_batch_size=4")),
    # The D2Z paper's WSD comparison: 617M at 80 TPP, cooldowns over the last 20% (it used 22.5%).
    "full": Scale(REPO / "configs/mup_111m.yaml", seeds=1, tpps=(20.0, 40.0, 80.0),
                  extra=("model.preset=mup-617m", "train.global_batch_size=504", "eval.max_samples=537109")),
}


def _steps(s: Scale, overrides: Sequence[str] = ()) -> dict[float, int]:
    """Updates of each budget, from the model's size and the global batch (the data's seq_len when present)."""
    from .estimate import offline_config

    out = {}
    for tpp in s.tpps:
        cfg, _ = offline_config(s.config, [*s.extra, "train.max_steps=null", "train.max_tokens=null",
                                           f"train.tokens_per_param={tpp}", *overrides])
        out[tpp] = cfg.train.max_steps
    return out


def build(scale: str, seeds: Optional[int] = None, out: Optional[Path] = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    s = SCALES[scale]
    steps = _steps(s, overrides)
    T_max = max(steps.values())
    W = max(1, round(s.warmup_fraction * min(steps.values())))
    S = round((1 - COOLDOWN) * T_max)  # the main run's length: the last branch point
    D = round(COOLDOWN * S)  # WSM window and the equal-length cooldown that ends at S
    keep = tuple(sorted({S - D + round(i * D / s.merge_checkpoints) for i in range(1, s.merge_checkpoints + 1)}))
    runs = []
    for seed in range(seeds or s.seeds):
        common = (*s.extra, f"optimizer.lr={s.lr}", "train.max_tokens=null", "train.tokens_per_param=null",
                  f"train.seed={seed}")
        main = f"seed{seed}/main"
        runs.append(RunSpec(main, (*common, "schedule.name=constant", "schedule.end_ratio=null",
                                   f"schedule.warmup_steps={W}", f"train.max_steps={S}"),
                            {"role": "main", "seed": seed, "tpp": None, "steps": S}, keep=keep))
        budgets = [(tpp, T) for tpp, T in steps.items()] + [("wsm", S)]
        for tpp, T in budgets:
            branch_at = S - D if tpp == "wsm" else round((1 - COOLDOWN) * T)
            for shape in SHAPES if tpp != "wsm" else ("linear",):
                runs.append(RunSpec(
                    f"seed{seed}/cooldown-{shape}/tpp{fmt(tpp)}",
                    (*common, "schedule.name=cooldown", "schedule.warmup_steps=0", "schedule.end_ratio=0.0",
                     f"schedule.params.shape={shape}", f"train.max_steps={T}"),
                    {"role": f"cooldown-{shape}", "seed": seed, "tpp": tpp, "steps": T}, parent=main, branch_step=branch_at))
            if tpp == "wsm":
                continue
            for name, end in (("Linear-D2Z", 0.0), ("Linear-10x", 0.1)):
                runs.append(RunSpec(
                    f"seed{seed}/{name}/tpp{fmt(tpp)}",
                    (*common, "schedule.name=linear", f"schedule.end_ratio={end}", f"schedule.warmup_steps={W}",
                     f"train.max_steps={T}"),
                    {"role": name, "seed": seed, "tpp": tpp, "steps": T}))
    notes = [f"budgets {', '.join(f'{fmt(t)} TPP = {steps[t]} updates' for t in s.tpps)}; warmup {W} updates in every "
             f"run; peak LR {fmt(s.lr)}; the main run is constant for {S} updates; cooldowns over the last "
             f"{COOLDOWN:.0%} of each budget",
             "not detectable at this scale (protocols.md section 4): WSD-S against WSD (no effect size in the paper, "
             "likely below the noise) and WSM's benchmark gains; the WSM row compares validation loss only"]
    return Study("wsd", s.config, runs, report=lambda results, out_dir: report(results, out_dir, s, steps, S, D, keep),
                 notes=notes)


# -- report -------------------------------------------------------------------------------------------

def _losses(results, role: str, tpp, seeds: list[int]) -> np.ndarray:
    out = np.full(len(seeds), np.nan)
    for r in results.select(role=role, tpp=tpp):
        if r.status == "done":
            out[seeds.index(r.spec.params["seed"])] = r.final_val_loss
    return out


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, int]:
    """Relative gap (a - b) / b, mean over seeds with a bootstrap interval."""
    from .stats import bootstrap_ci

    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return math.nan, math.nan, math.nan, 0
    d = ((a - b) / b)[ok]
    est, lo, hi = bootstrap_ci(lambda x: float(np.mean(x)), d, n_boot=2000)
    return est, lo, hi, int(ok.sum())


def report(results, out: Path, s: Scale, steps: dict, S: int, D: int, keep: tuple[int, ...]) -> str:
    from . import stats
    from .plots import save_figure
    from .report import fmt_loss

    seeds = sorted(results.values("seed"))
    n = len(seeds)
    roles = [f"cooldown-{sh}" for sh in SHAPES] + ["Linear-D2Z", "Linear-10x"]
    lines = [f"Final validation loss, mean over {n} seed(s) (± standard deviation):", "",
             "| budget | updates | " + " | ".join(roles) + " |", "|---" * (len(roles) + 2) + "|"]
    for tpp in s.tpps:
        cells = []
        for role in roles:
            v = _losses(results, role, tpp, seeds)
            sd = np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else math.nan
            cells.append(fmt_loss(float(np.nanmean(v)) if np.isfinite(v).any() else math.nan) +
                         (f" ±{sd:.4f}" if np.isfinite(sd) else ""))
        lines.append(f"| {fmt(tpp)} TPP | {steps[tpp]} | " + " | ".join(cells) + " |")
    lines += ["", "Paired gaps at equal tokens, (L_x - L_D2Z) / L_D2Z, mean over seeds with a 95% bootstrap interval "
              "(> 0: D2Z better):", ""]
    verdicts = []
    for tpp in s.tpps:
        d2z = _losses(results, "Linear-D2Z", tpp, seeds)
        parts = []
        for role in roles:
            if role == "Linear-D2Z":
                continue
            est, lo, hi, k = _paired(_losses(results, role, tpp, seeds), d2z)
            parts.append(f"{role} {est:+.2%} [{lo:+.2%}, {hi:+.2%}]")
        lines.append(f"- {fmt(tpp)} TPP: " + "; ".join(parts))
    top = max(s.tpps)
    d2z = _losses(results, "Linear-D2Z", top, seeds)
    wsd = _losses(results, "cooldown-linear", top, seeds)
    tenx = _losses(results, "Linear-10x", top, seeds)
    verdicts.append(stats.verdict_ci(f"D2Z is at least as good as a WSD cooldown branch at {fmt(top)} TPP "
                                     "(paper, 617M at 80 TPP: D2Z better by 0.84%)", *_paired(wsd, d2z)[:3], n, ">=0"))
    verdicts.append(stats.verdict_ci(f"a WSD cooldown branch beats Linear-10x at {fmt(top)} TPP (paper: WSD beats 10x)",
                                     *_paired(tenx, wsd)[:3], n, ">0"))
    separate = sum(steps[t] for t in s.tpps) * len(SHAPES)
    branched = S + sum(steps[t] - round((1 - COOLDOWN) * steps[t]) for t in s.tpps) * len(SHAPES)
    lines += ["", f"Compute: the {len(s.tpps) * len(SHAPES)} cooldowns cost {branched} updates as branches of one main run "
              f"({S} updates) against {separate} as separate runs: {1 - branched / separate:.0%} saved per seed."]
    wsm = _wsm(results, out, seeds, S, D, keep)
    lines += ["", f"WSM: the uniform merge of the main run's checkpoints at steps {list(keep)} (window {D} updates "
              f"ending at {S}) against a linear cooldown over the same {D} updates ending at {S} (equal tokens):", ""]
    cool = _losses(results, "cooldown-linear", "wsm", seeds)
    if np.isfinite(wsm).any():
        est, lo, hi, k = _paired(wsm, cool)
        lines.append(f"- merged {fmt_loss(float(np.nanmean(wsm)))} vs cooldown {fmt_loss(float(np.nanmean(cool)))}: "
                     f"(L_merge - L_cooldown) / L_cooldown = {est:+.2%} [{lo:+.2%}, {hi:+.2%}], {k} seed(s)")
        verdicts.append(stats.verdict_ci("a WSM merge matches an equal-length cooldown (paper: merging emulates decay)",
                                         est, lo, hi, k, "<=0"))
    else:
        lines.append("- not computed (the main run or its checkpoints are missing)")
    lines += ["", "### Verdicts", ""] + [v.markdown() for v in verdicts]
    save_figure(out / "wsd_curves.png", _plot, results, seeds[0] if seeds else 0, s)
    lines += ["", "![training loss of the main run, its cooldowns and the planned runs](wsd_curves.png)"]
    return "\n".join(lines) + "\n"


def _wsm(results, out: Path, seeds: list[int], S: int, D: int, keep: tuple[int, ...]) -> np.ndarray:
    """Validation loss of the uniform merge of each seed's main-run checkpoints in ``keep`` (cached in OUT/wsm)."""
    from pretrain.checkpoint import CheckpointDir
    from pretrain.evaluate import evaluate
    from pretrain.merge import merge

    losses = np.full(len(seeds), np.nan)
    for r in results.select(role="main"):
        if r.status != "done":
            continue
        cache = out / "wsm" / f"{r.key}.json"
        if not cache.is_file():
            ckpts = CheckpointDir(r.run_dir / "checkpoints")
            tags = [f"step_{k:08d}" for k in keep]
            if not all(t in ckpts.complete_tags() for t in tags):
                continue
            merged = merge(ckpts, tags, "uniform", out / "wsm" / r.key, log=lambda *_: None, overwrite=True)
            result = evaluate(merged)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(result))
        losses[seeds.index(r.spec.params["seed"])] = json.loads(cache.read_text())["val_loss"]
    return losses


def _plot(fig, results, seed: int, s: Scale):
    ax = fig.subplots()
    from .stats import window_means

    for r in results.select(seed=seed):
        if r.status != "done" or (r.spec.params["tpp"] not in (max(s.tpps), None)):
            continue
        steps, loss = window_means(*r.series("loss"), window=max(1, r.spec.params["steps"] // 100))
        ax.plot(steps, loss, lw=1, label=r.spec.params["role"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (window mean)")
    ax.set_title(f"seed {seed}, budget {fmt(max(s.tpps))} TPP")
    ax.legend(fontsize=7)
