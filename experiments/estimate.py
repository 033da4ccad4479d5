"""What a study will cost before it runs: each run's size, budget, FLOPs, time on this machine, and its
dual-view figures (alpha*T and c_{T,0}, D2Z paper section 3), without needing the data to exist.

Time comes from a short calibration: the run's model, at its micro batch and sequence length and in the
precision this machine would choose, timed over a few forward/backward/AdamW steps on the threads one slot
gets. Models too large to time here are estimated from the FLOPs at 40% of the measured (CPU) or table
(GPU) peak, and say so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .study import RunSpec, Study

CALIBRATE_MAX_PARAMS = 30_000_000  # larger models are estimated from the peak FLOP rate instead
RUN_OVERHEAD_S = 6.0  # per in-process run: DeepSpeed set-up, data loader, evaluation, checkpoints (measured on 2 cores)
STEP_OVERHEAD = 1.35  # the trainer's step over the bare model step (DeepSpeed, clipping, logging; measured)


@dataclass
class RunPlan:
    spec: RunSpec
    key: str
    params: int
    seq_len: int
    global_batch: int
    steps: int  # the run's total updates
    own_steps: int  # updates this run trains (a branch continues its parent's)
    tokens: int
    tpp: float
    flops: float  # of the updates this run trains: 6ND-style model FLOPs incl. attention
    alpha_T: float  # peak LR x weight decay x steps (muP: the hidden matrices' LR)
    c_T0: float  # dual coefficient left on the initial weights
    epochs: float | None  # passes over the training split (None: data missing)
    seconds: float | None = None
    time_basis: str = ""

    def row(self) -> dict:
        return {
            "run": self.spec.label, "key": self.key, "params_M": round(self.params / 1e6, 3), "steps": self.steps,
            "tokens_M": round(self.tokens / 1e6, 2), "TPP": round(self.tpp, 2), "PFLOPs": self.flops / 1e15,
            "alpha_T": self.alpha_T, "c_T0": self.c_T0, "epochs": self.epochs, "est_min": (self.seconds or 0) / 60,
        }


@dataclass
class StudyPlan:
    runs: list[RunPlan]
    data_note: str  # "data/study/tokens: 6.1M train tokens" or "data missing: ..."
    train_tokens: int | None
    # a dynamic study's runs not known yet (Study.projected), priced the same way: name -> their plans
    projected: dict[str, list[RunPlan]] = dataclasses.field(default_factory=dict)
    slots: int = 1

    @property
    def seconds(self) -> float:
        return sum(r.seconds or 0.0 for r in self.runs)

    def steps(self) -> dict[str, int]:
        return {r.spec.label: r.own_steps for r in self.runs}


def offline_config(config: Path, overrides: Sequence[str] = ()):
    """``(config, manifest or None)``: the run config with its budget resolved from the data's manifest, or from
    the config alone when the data is missing (seq_len: model.max_seq_len; vocabulary: 50257)."""
    from pretrain.config_loader import Problems, Sources
    from pretrain.run_config import load_run_config, resolve_budget

    cfg = load_run_config(config, list(overrides))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data), model=dataclasses.replace(cfg.model),
                              train=dataclasses.replace(cfg.train))
    manifest = None
    source = cfg.data.build()
    if not source.check_files():
        manifest = source.manifest()
        cfg.data.seq_len = cfg.data.seq_len or int(manifest["seq_len"])
        cfg.model.vocab_size = cfg.model.vocab_size or int(manifest["vocab_size"])
    cfg.data.seq_len = cfg.data.seq_len or cfg.model.max_seq_len
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = 50257
    problems = Problems(Sources(str(config)))
    resolve_budget(cfg, problems)
    problems.raise_if_any()
    return cfg, manifest


def plan(study: Study, slots: int = 1, calibrate: bool = True) -> StudyPlan:
    """Every run's figures; ``calibrate`` times each distinct model once on this machine. A dynamic study's
    projected runs (runs it will add once others finish) are priced too, apart (``StudyPlan.projected``)."""
    timings: dict[tuple, tuple[float, str]] = {}
    rows, train_tokens, note = _plan_runs(study, study.runs, slots, calibrate, timings)
    projected = {}
    for name, runs in getattr(study, "projected", {}).items():
        # their names need the runs they branch from: a study of the known runs plus these
        whole = Study(study.name, study.config, [*study.runs, *[r for r in runs if r.label not in
                                                                {k.label for k in study.runs}]], study.report)
        projected[name] = _plan_runs(whole, runs, slots, calibrate, timings)[0]
    return StudyPlan(rows, note, train_tokens, projected, max(1, slots))


def _plan_runs(study: Study, runs: Sequence[RunSpec], slots: int, calibrate: bool,
               timings: dict[tuple, tuple[float, str]]) -> tuple[list[RunPlan], int | None, str]:
    import numpy as np

    from pretrain.schedules.dual import smoothing, summarize

    rows: list[RunPlan] = []
    train_tokens, note = None, ""
    for run in runs:
        cfg, manifest = offline_config(study.config, run.overrides)
        if manifest is not None:
            train_tokens = int(manifest["splits"]["train"]["tokens"])
            note = f"{cfg.data.path}: {train_tokens / 1e6:.2f}M training tokens (seq_len {cfg.data.seq_len})"
        else:
            note = (f"data missing: {cfg.data.path} has no manifest.json; prepare it with `python -m data_prep tokenize` "
                    f"(see README). Budgets below assume seq_len {cfg.data.seq_len} and vocab {cfg.model.vocab_size}.")
        t = cfg.train
        n = cfg.model.num_params()
        tokens = t.max_steps * t.global_batch_size * cfg.data.seq_len
        own = t.max_steps - (run.branch_step or 0)
        flops = cfg.model.flops_per_token(cfg.data.seq_len) * own * t.global_batch_size * cfg.data.seq_len
        alpha = cfg.dual_alpha()
        try:
            mult = np.asarray(cfg.build_schedule().multipliers())
            c0 = summarize(smoothing(mult, alpha)).c0 if alpha > 0 else 1.0
        except ValueError:
            c0 = math.nan
        rp = RunPlan(run, study.key(run), n, cfg.data.seq_len, t.global_batch_size, t.max_steps, own, tokens,
                     tokens / n, flops, alpha * t.max_steps, c0,
                     tokens / train_tokens if train_tokens else None)
        if calibrate:
            model_key = (json_key(cfg.model), t.micro_batch_size, cfg.data.seq_len, cfg.train.precision)
            if model_key not in timings:
                timings[model_key] = step_seconds(cfg, slots)
            per_micro, basis = timings[model_key]
            micro_steps = own * t.global_batch_size / t.micro_batch_size
            rp.seconds = micro_steps * per_micro + (RUN_OVERHEAD_S if own > 0 else 0.0)
            rp.time_basis = basis
        rows.append(rp)
    return rows, train_tokens, note


def json_key(obj) -> str:
    import json

    return json.dumps(dataclasses.asdict(obj), sort_keys=True, default=str)


def step_seconds(cfg, slots: int) -> tuple[float, str]:
    """Seconds per micro step (forward, backward, optimizer) of ``cfg``'s model on one slot's share of this machine."""
    import torch

    from pretrain.hardware import choose_precision, detect, peak_flops
    from pretrain.model.loss import lm_loss

    hw = detect()
    precision = choose_precision(cfg.train.precision, hw).precision
    cores = hw.cores if hw.device == "cpu" else 1
    threads = max(1, cores // max(1, slots))
    seq, micro = cfg.data.seq_len, cfg.train.micro_batch_size
    flops = cfg.model.flops_per_token(seq) * seq * micro
    if cfg.model.num_params() > CALIBRATE_MAX_PARAMS:
        peak, where = peak_flops(hw, precision, threads, cfg.train.peak_tflops)
        if not peak:
            return math.nan, f"no peak FLOP rate known ({where})"
        return flops / (0.4 * peak), f"FLOPs at 40% of the {where} peak"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = cfg.model.build()
        device = "cuda" if hw.device == "cuda" else "cpu"
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, cfg.model.vocab_size, (micro, seq + 1), device=device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def step():
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                loss, _ = lm_loss(model(x[:, :-1]), x[:, 1:], cfg.model.z_loss)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return min(times) * STEP_OVERHEAD, f"calibrated ({precision}, {threads} thread{'s' * (threads > 1)})"


def table(study_plan: StudyPlan) -> str:
    """The dry run's table, one line per run."""
    head = (f"{'run':44} {'key':12} {'params':>8} {'steps':>6} {'tokens':>8} {'TPP':>6} {'FLOPs':>8} "
            f"{'aT':>6} {'c_T0':>8} {'epochs':>6} {'time':>7}")
    lines = [head, "-" * len(head)] + [_row(r) for r in study_plan.runs]
    for name, runs in list(study_plan.projected.items())[:1]:  # the first (expected) list: runs the study will add
        if runs:
            lines.append(f"-- projected ({name}): runs the study adds once the runs above have finished --")
            lines += [_row(r) for r in runs]
    return "\n".join(lines)


def _row(r: RunPlan) -> str:
    epochs = f"{r.epochs:.2f}" if r.epochs is not None else "?"
    seconds = "?" if r.seconds is None or math.isnan(r.seconds) else duration(r.seconds)
    branch = f" <- {r.spec.parent}@{r.spec.branch_step}" if r.spec.parent else ""
    return (f"{(r.spec.label + branch)[:44]:44} {r.key:12} {r.params / 1e6:7.2f}M {r.steps:6d} {r.tokens / 1e6:7.2f}M "
            f"{r.tpp:6.1f} {r.flops:8.2e} {r.alpha_T:6.2f} {r.c_T0:8.2e} {epochs:>6} {seconds:>7}")


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.0f}s"


def warnings(study_plan: StudyPlan, max_epochs: float = 4.0) -> list[str]:
    out = []
    known = study_plan.seconds
    for name, runs in study_plan.projected.items():
        secs = sum(r.seconds or 0.0 for r in runs)
        steps = sum(r.own_steps for r in runs)
        timed = f", est. {duration(secs / study_plan.slots)} more with {study_plan.slots} slot" \
                f"{'s' * (study_plan.slots > 1)}: {duration((known + secs) / study_plan.slots)} in all" if secs else ""
        out.append(f"projected ({name}): the study adds {len(runs)} runs as its runs finish ({steps} updates{timed})")
    over = [r for r in study_plan.runs if r.epochs is not None and r.epochs > max_epochs]
    if over:
        worst = max(over, key=lambda r: r.epochs)
        out.append(f"warning: {len(over)} run(s) see the training data more than {max_epochs:g} times "
                   f"(up to {worst.epochs:.1f} epochs in {worst.spec.label}); repeated data changes what the "
                   "schedules are compared on")
    return out

