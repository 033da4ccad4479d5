"""WSD (paper 001 and D2Z section 4.3) and WSM: cooldowns branched from one constant-LR run at tuned LRs, against
runs planned per budget, and merges of the constant run's checkpoints with the weights the WSM duality gives.

Every arm runs at its own best peak LR: the bracketed optima of the d2z study's seed-0 grid (read from
``OUT/../d2z-SCALE`` when that study has bracketed them), else a small LR bracket of the study's own (the d2z grid's
seed-0 runs of WSD, Linear-D2Z and Linear-10x at the largest budget, extended until bracketed, then every budget at
those LRs). One warmup-stable main run per seed at WSD's best LR, with the D2Z protocol's 10% warmup of the largest
budget. For each budget T_b it is branched at 0.8 T_b into cooldowns over the last 20% (linear and 1-sqrt); each
budget also gets a Linear-D2Z and a Linear-10x run planned for it with 10% warmup of its own budget. All are compared
at equal tokens, per seed (paired t-intervals). The compute saved is counted for ONE cooldown shape against its
planned runs.

WSM: the main run keeps a checkpoint every ~1% of each merge window (the window's first step included); a merge
window of 5/10/20/40% of the main run ending at its last step is merged with the weights of the WSM duality for a
linear and a 1-sqrt decay (``pretrain.merge.duality_weights``: w_i = sum_{j>=i} c_j equals the decay multiplier) and
with today's uniform merge of 4 checkpoints (a staircase to 25%), each against a cooldown branch of the same shape and
length ending at the same step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import d2z
from .study import RunSpec, Study, fmt

REPO = Path(__file__).resolve().parent.parent
SHAPES = ("linear", "1-sqrt")
COOLDOWN = 0.2  # of each budget
TUNED = ("WSD", "Linear-D2Z", "Linear-10x")  # the d2z schedules whose optima set this study's LRs
MARGIN = 0.001  # +-0.1% relative: the margin of every no-worse verdict
# WSM merges: name -> pretrain.merge method (None: today's uniform merge of UNIFORM_POINTS checkpoints)
MERGES = {"decay:linear": "decay:linear", "decay:1-sqrt": "decay:1-sqrt", "uniform-4": "uniform"}
MERGE_SHAPE = {"decay:linear": "linear", "decay:1-sqrt": "1-sqrt", "uniform-4": "linear"}  # the cooldown compared
UNIFORM_POINTS = 4


@dataclass(frozen=True)
class Scale:
    config: Path
    seeds: int
    tpps: tuple[float, ...]
    lr: float = 1.6e-2  # the LR when nothing is tuned (tiny; planning without an output directory)
    warmup_fraction: float = 0.1  # of the largest budget for the main run; of their own budget for planned runs
    wsm_durations: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)  # merge windows, fractions of the main run
    wsm_points: int = 100  # checkpoints per merge window (every ~1% of it), its first step included
    tune: bool = True
    d2z_model: str = ""  # the d2z study's model (its Scale.models name) whose optima this study uses
    extra: tuple[str, ...] = ()


SCALES = {
    "cpu": Scale(REPO / "configs/studies/cpu.yaml", seeds=3, tpps=(5.0, 10.0, 20.0)),
    "tiny": Scale(REPO / "configs/studies/cpu.yaml", seeds=1, tpps=(0.06,), wsm_durations=(0.4,), wsm_points=4,
                  tune=False, extra=("train.global_batch_size=4", "train.micro_batch_size=4")),
    # The D2Z paper's WSD comparison: 617M at 80 TPP, cooldowns over the last 20% (it used 22.5%).
    "full": Scale(REPO / "configs/mup_111m.yaml", seeds=1, tpps=(20.0, 40.0, 80.0), wsm_points=20, d2z_model="617M",
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


def merge_window(S: int, fraction: float, points: int) -> list[int]:
    """Checkpoint steps of the merge window of ``fraction`` of a run of ``S`` updates ending at S: its first step
    S - D (D = round(fraction S), at least 1) and then every max(1, round(D / points)) updates, S included."""
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"merge window fraction {fraction!r}: expected a number in (0, 1]")
    if points < 1:
        raise ValueError(f"merge window points {points!r}: expected >= 1")
    D = max(1, round(fraction * S))
    every = max(1, round(D / points))
    steps = list(range(S - D, S + 1, every))
    if steps[-1] != S:
        steps.append(S)
    return steps


def uniform_steps(S: int, fraction: float, n: int = UNIFORM_POINTS) -> list[int]:
    """Today's uniform merge: ``n`` checkpoints evenly over the window, its first step excluded (a staircase)."""
    D = max(1, round(fraction * S))
    return sorted({S - D + round(i * D / n) for i in range(1, n + 1)})


@dataclass
class LRChoice:
    """The peak LR of each arm: role -> {tpp: lr}, where they came from, and runs still needed to find them."""

    main: float
    planned: dict[str, dict[float, float]]
    source: str
    probes: list[RunSpec]
    pending: bool


def _snap(lrs: Sequence[float], base: float) -> float:
    """The grid LR (base x 2^k) nearest the geometric mean of ``lrs`` (a budget between two tuned ones)."""
    k = float(np.mean([math.log2(x / base) for x in lrs]))
    return base * 2.0 ** math.floor(k + 0.5)


def choose_lrs(s: Scale, scale: str, out: Path | None, overrides: Sequence[str] = ()) -> LRChoice:
    """Each arm's peak LR: from the d2z study's bracketed optima, else from this study's own bracket (probes)."""
    top = max(s.tpps)
    if not s.tune or out is None:
        why = "untuned at this scale" if not s.tune else "untuned: planned without an output directory"
        return LRChoice(s.lr, {n: {t: s.lr for t in s.tpps} for n in TUNED[1:]}, f"the base LR {fmt(s.lr)} ({why})",
                        [], False)
    ds = d2z.scale_of(scale)
    d2z_out = Path(out).parent / f"d2z-{scale}"
    found = d2z.best_lrs(scale, d2z_out, TUNED, ds.tpps, overrides, model=s.d2z_model)

    def lr_at(name: str, tpp: float) -> float | None:
        if (name, tpp) in found:
            return found[(name, tpp)]
        below = [t for t in ds.tpps if t < tpp and (name, t) in found]
        above = [t for t in ds.tpps if t > tpp and (name, t) in found]
        if below and above:  # between two tuned budgets: the grid LR at their geometric mean
            return _snap([found[(name, max(below))], found[(name, min(above))]], ds.base_lr)
        return None

    main = lr_at("WSD", top)
    planned = {n: {t: lr_at(n, t) for t in s.tpps} for n in TUNED[1:]}
    if main is not None and all(v is not None for p in planned.values() for v in p.values()):
        return LRChoice(main, planned, f"the bracketed optima of the d2z study in {d2z_out} (seed 0's grid; a budget "
                        "between two tuned ones takes the grid LR at their geometric mean)", [], False)  # type: ignore[arg-type]
    # A small bracket of this study's own: d2z's seed-0 grid at the largest budget for WSD, Linear-D2Z, Linear-10x
    own = dataclasses.replace(ds, seeds=1, tpps=(top,), schedules=TUNED,
                              models=tuple(m for m in ds.models if m[0] == s.d2z_model) or (ds.models[0],))
    arms, runs = d2z.arms(own, Path(out), overrides)
    probes = [dataclasses.replace(r, label=f"lr-probe/{r.label}", params={**r.params, "role": "lr-probe"})
              for r in runs]
    best = {a.schedule: a for a in arms}
    if any(a.state == d2z.PENDING for a in arms):
        return LRChoice(s.lr, {}, "this study's own LR bracket (pending)", probes, True)
    capped = [a.schedule for a in arms if a.state != d2z.BRACKETED]
    lr = {n: (best[n].best_lr or s.lr) for n in TUNED}
    return LRChoice(lr["WSD"], {n: {t: lr[n] for t in s.tpps} for n in TUNED[1:]},
                    f"this study's own LR bracket (no bracketed d2z results in {d2z_out}): seed 0 at {fmt(top)} TPP "
                    f"over the d2z grid, every budget at the optimum found there"
                    + (f"; at the grid's cap (the optimum may lie beyond it): {', '.join(capped)}" if capped else ""),
                    probes, False)


def build(scale: str, seeds: int | None = None, out: Path | None = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    s = SCALES[scale]
    steps = _steps(s, overrides)
    T_max = max(steps.values())
    W = max(1, round(s.warmup_fraction * T_max))  # the main run's warmup: the D2Z protocol's 10% of the top budget
    S = round((1 - COOLDOWN) * T_max)  # the main run's length: the last branch point
    windows = {f: merge_window(S, f, s.wsm_points) for f in s.wsm_durations}
    keep = tuple(sorted({k for w in windows.values() for k in w} | {k for f in s.wsm_durations for k in uniform_steps(S, f)}))
    choice = choose_lrs(s, scale, out, overrides)
    runs = list(choice.probes)
    projected: dict[str, list[RunSpec]] = {}
    arm_runs: list[RunSpec] = []
    for seed in range(seeds or s.seeds):
        common = (*s.extra, "train.max_tokens=null", "train.tokens_per_param=null", f"train.seed={seed}")
        main = f"seed{seed}/main"
        arm_runs.append(RunSpec(main, (*common, f"optimizer.lr={choice.main}", "schedule.name=constant",
                                       "schedule.end_ratio=null", f"schedule.warmup_steps={W}", f"train.max_steps={S}"),
                                {"role": "main", "seed": seed, "tpp": None, "steps": S, "lr": choice.main}, keep=keep))
        cool = (*common, f"optimizer.lr={choice.main}", "schedule.name=cooldown", "schedule.warmup_steps=0",
                "schedule.end_ratio=0.0")
        for tpp, T in steps.items():
            for shape in SHAPES:
                arm_runs.append(RunSpec(
                    f"seed{seed}/cooldown-{shape}/tpp{fmt(tpp)}", (*cool, f"schedule.params.shape={shape}", f"train.max_steps={T}"),
                    {"role": f"cooldown-{shape}", "seed": seed, "tpp": tpp, "steps": T, "lr": choice.main},
                    parent=main, branch_step=round((1 - COOLDOWN) * T)))
            for name, end in (("Linear-D2Z", 0.0), ("Linear-10x", 0.1)):
                lr = choice.planned.get(name, {}).get(tpp, s.lr)
                arm_runs.append(RunSpec(
                    f"seed{seed}/{name}/tpp{fmt(tpp)}",
                    (*common, f"optimizer.lr={lr}", "schedule.name=linear", f"schedule.end_ratio={end}",
                     "schedule.warmup_steps=null", f"schedule.warmup_fraction={s.warmup_fraction}", f"train.max_steps={T}"),
                    {"role": name, "seed": seed, "tpp": tpp, "steps": T, "lr": lr}))
        for f, window in windows.items():  # WSM: cooldowns of the merge windows' length, ending at S
            for shape in SHAPES:
                arm_runs.append(RunSpec(
                    f"seed{seed}/wsm-cooldown-{shape}/d{fmt(100 * f)}",
                    (*cool, f"schedule.params.shape={shape}", f"train.max_steps={S}"),
                    {"role": f"wsm-cooldown-{shape}", "seed": seed, "tpp": "wsm", "duration": f, "steps": S,
                     "lr": choice.main}, parent=main, branch_step=window[0]))
    if choice.pending:
        projected = {"expected": [dataclasses.replace(r, overrides=tuple(r.overrides) + tuple(overrides)) for r in arm_runs]}
    else:
        runs += arm_runs
    separate = sum(steps.values())
    branched = S + sum(T - round((1 - COOLDOWN) * T) for T in steps.values())
    notes = [f"budgets {', '.join(f'{fmt(t)} TPP = {steps[t]} updates' for t in s.tpps)}; peak LRs from {choice.source}; "
             f"the main run is constant for {S} updates after a {W}-update warmup (10% of the largest budget: smaller "
             f"budgets' cooldowns inherit it), planned runs warm up over 10% of their own budget; cooldowns over the "
             f"last {COOLDOWN:.0%} of each budget",
             f"WSM: {len(keep)} checkpoints kept in each main run (every ~1% of the {', '.join(f'{f:.0%}' for f in s.wsm_durations)} "
             f"windows ending at step {S}, first steps included); merging and evaluating them runs after training "
             f"({len(MERGES) * len(s.wsm_durations)} merges per seed)",
             f"compute for one cooldown shape: {branched} updates as branches of one main run against {separate} as "
             f"separate planned runs per seed",
             "not detectable at this scale (protocols.md section 4): WSD-S against WSD (no effect size in the paper, "
             "likely below the noise) and WSM's benchmark gains; the WSM rows compare validation loss only"]
    return Study("wsd", s.config, runs, notes=notes, dynamic=choice.pending, projected=projected,
                 report=lambda results, out_dir: report(results, out_dir, s, steps, S, windows, choice))


# -- report -------------------------------------------------------------------------------------------

def _losses(results, role: str, tpp, seeds: list[int], **params) -> np.ndarray:
    out = np.full(len(seeds), np.nan)
    for r in results.select(role=role, tpp=tpp, **params):
        if r.status == "done" and r.spec.params["seed"] in seeds:
            out[seeds.index(r.spec.params["seed"])] = r.final_val_loss
    return out


def _gap(a: np.ndarray, b: np.ndarray, estimator: str):
    """Per-seed (a - b) / b, its mean and paired t-interval (:func:`experiments.stats.paired_estimate`)."""
    from .stats import paired_estimate

    return paired_estimate((a - b) / b, estimator)


def compute_saved(steps: dict, S: int) -> tuple[int, int, float]:
    """(updates as branches of one main run, as separate planned runs, fraction saved) for ONE cooldown shape."""
    separate = sum(steps.values())
    branched = S + sum(T - round((1 - COOLDOWN) * T) for T in steps.values())
    return branched, separate, 1 - branched / separate


def report(results, out: Path, s: Scale, steps: dict, S: int, windows: dict, choice: LRChoice) -> str:
    from . import stats
    from .plots import save_figure
    from .report import fmt_loss

    seeds = sorted({r.spec.params["seed"] for r in results.records.values() if r.spec.params.get("role") != "lr-probe"})
    n = len(seeds)
    roles = [f"cooldown-{sh}" for sh in SHAPES] + ["Linear-D2Z", "Linear-10x"]
    lines = [f"Peak LRs from {choice.source}: main run (WSD) {fmt(choice.main)}; "
             + "; ".join(f"{name} " + ", ".join(f"{fmt(t)} TPP {fmt(lr)}" for t, lr in by.items())
                         for name, by in choice.planned.items()) + ".", "",
             f"Final validation loss, mean over {n} seed(s) (± standard deviation):", "",
             "| budget | updates | " + " | ".join(roles) + " |", "|---" * (len(roles) + 2) + "|"]
    for tpp in s.tpps:
        cells = []
        for role in roles:
            v = _losses(results, role, tpp, seeds)
            sd = np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else math.nan
            cells.append(fmt_loss(float(np.nanmean(v)) if np.isfinite(v).any() else math.nan) +
                         (f" ±{sd:.4f}" if np.isfinite(sd) else ""))
        lines.append(f"| {fmt(tpp)} TPP | {steps[tpp]} | " + " | ".join(cells) + " |")
    est_name = "final validation loss per seed"
    lines += ["", f"Paired gaps at equal tokens, (L_x - L_D2Z) / L_D2Z (> 0: D2Z better), mean with a 95% paired "
              f"t-interval over the seeds ({est_name}):", ""]
    for tpp in s.tpps:
        d2z_l = _losses(results, "Linear-D2Z", tpp, seeds)
        parts = [f"{role} {_gap(_losses(results, role, tpp, seeds), d2z_l, est_name).text()}"
                 for role in roles if role != "Linear-D2Z"]
        sq = _gap(_losses(results, "cooldown-1-sqrt", tpp, seeds), _losses(results, "cooldown-linear", tpp, seeds), est_name)
        lines.append(f"- {fmt(tpp)} TPP: " + "; ".join(parts) + f"; 1-sqrt vs linear cooldown (L_1-sqrt - L_linear) / "
                     f"L_linear {sq.text()}")
    top = max(s.tpps)
    d2z_l = _losses(results, "Linear-D2Z", top, seeds)
    lin, sqrt_ = _losses(results, "cooldown-linear", top, seeds), _losses(results, "cooldown-1-sqrt", top, seeds)
    tenx = _losses(results, "Linear-10x", top, seeds)
    verdicts = [
        stats.verdict(f"D2Z beats a WSD cooldown branch (1-sqrt, the stronger shape) at {fmt(top)} TPP (paper, 617M at "
                      "80 TPP: D2Z better than the best WSD by 0.84%)", _gap(sqrt_, d2z_l, est_name), ">0"),
        stats.verdict(f"a WSD cooldown branch (linear) beats Linear-10x at {fmt(top)} TPP (paper: WSD beats 10x)",
                      _gap(tenx, lin, est_name), ">0"),
        stats.verdict(f"a 1-sqrt cooldown beats a linear cooldown at {fmt(top)} TPP (Hägele et al.)",
                      _gap(lin, sqrt_, est_name), ">0"),
    ]
    branched, separate, saved = compute_saved(steps, S)
    lines += ["", f"Compute, for ONE cooldown shape: its {len(steps)} cooldowns cost {branched} updates as branches of "
              f"one main run ({S} updates) against {separate} as separate planned runs: {saved:.0%} saved per seed "
              f"(each further shape costs only its cooldowns, {branched - S} updates)."]
    lines += ["", f"WSM: merges of the main run's checkpoints over a window ending at step {S} against a cooldown branch "
              f"of the same shape over the same window (equal tokens); (L_merge - L_cooldown) / L_cooldown, paired t "
              f"over the seeds; decay:SHAPE weights come from the WSM duality (pretrain.merge.duality_weights), "
              f"uniform-4 is today's merge of {UNIFORM_POINTS} checkpoints (a staircase to 1/{UNIFORM_POINTS}):", "",
              "| window | checkpoints | " + " | ".join(MERGES) + " |", "|---" * (len(MERGES) + 2) + "|"]
    merged = _wsm(results, out, seeds, S, windows)
    for f, window in windows.items():
        cells = []
        for name in MERGES:
            m = merged.get((f, name), np.full(n, np.nan))
            cool = _losses(results, f"wsm-cooldown-{MERGE_SHAPE[name]}", "wsm", seeds, duration=f)
            if not np.isfinite(m).any():
                cells.append("not computed")
                continue
            g = _gap(m, cool, "final validation loss per seed")
            cells.append(f"{fmt_loss(float(np.nanmean(m)))} vs {MERGE_SHAPE[name]} {fmt_loss(float(np.nanmean(cool)))}: "
                         f"{g.value:+.2%} [{g.lo:+.2%}, {g.hi:+.2%}]")
            if name != "uniform-4":
                verdicts.append(stats.verdict(
                    f"a {name} merge over {f:.0%} of the run is no worse than a {MERGE_SHAPE[name]} cooldown of the "
                    f"same length (WSM: merging emulates decay)", g, "<=0", margin=MARGIN))
        lines.append(f"| {f:.0%} ({window[-1] - window[0]} updates) | {len(window)} | " + " | ".join(cells) + " |")
    lines += ["", "### Verdicts", ""] + [v.markdown() for v in verdicts]
    save_figure(out / "wsd_curves.png", _plot, results, seeds[0] if seeds else 0, s)
    lines += ["", "![training loss of the main run, its cooldowns and the planned runs](wsd_curves.png)"]
    return "\n".join(lines) + "\n"


def merge_plan(S: int, window: list[int], name: str, fraction: float) -> tuple[list[int], list[float]]:
    """The checkpoint steps of merge ``name`` over ``window`` and their weights (oldest first)."""
    from pretrain.merge import merge_weights

    steps = uniform_steps(S, fraction) if name == "uniform-4" else list(window)
    return steps, merge_weights(MERGES[name], len(steps))


def _wsm(results, out: Path, seeds: list[int], S: int, windows: dict) -> dict[tuple[float, str], np.ndarray]:
    """Validation loss of each merge of each seed's main run (cached in OUT/wsm/<key>/<merge>-<window>.json)."""
    from pretrain.checkpoint import CheckpointDir
    from pretrain.evaluate import evaluate
    from pretrain.merge import merge

    losses: dict[tuple[float, str], np.ndarray] = {}
    for r in results.select(role="main"):
        if r.status != "done" or r.spec.params["seed"] not in seeds:
            continue
        for f, window in windows.items():
            for name in MERGES:
                tag_name = f"{name.replace(':', '-')}-d{fmt(100 * f)}"
                cache = out / "wsm" / r.key / f"{tag_name}.json"
                if not cache.is_file():
                    ckpts = CheckpointDir(r.run_dir / "checkpoints")
                    steps, _ = merge_plan(S, window, name, f)
                    tags = [f"step_{k:08d}" for k in steps]
                    if not set(tags) <= set(ckpts.complete_tags()):
                        continue
                    merged = merge(ckpts, tags, MERGES[name], out / "wsm" / r.key / tag_name, log=lambda *_: None,
                                   overwrite=True)
                    result = evaluate(merged)
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps({"val_loss": result["val_loss"], "steps": steps, "method": MERGES[name]}))
                arr = losses.setdefault((f, name), np.full(len(seeds), np.nan))
                arr[seeds.index(r.spec.params["seed"])] = json.loads(cache.read_text())["val_loss"]
    return losses


def _plot(fig, results, seed: int, s: Scale):
    ax = fig.subplots()
    from .stats import window_means

    for r in results.select(seed=seed):
        if r.status != "done" or r.spec.params.get("role") == "lr-probe" or r.spec.params.get("tpp") not in (max(s.tpps), None):
            continue
        steps, loss = window_means(*r.series("loss"), window=max(1, r.spec.params["steps"] // 100))
        ax.plot(steps, loss, lw=1, label=r.spec.params["role"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (window mean)")
    ax.set_title(f"seed {seed}, budget {fmt(max(s.tpps))} TPP")
    ax.legend(fontsize=7)
