"""SkipLR's runs, stage by stage (the study is dynamic: each stage is added once the one before has finished).

Variant ``pretrained`` (the default; the paper's Table 2 fine-tunes pretrained models on a new dataset):

1. **base**: the project's trainer pretrains ``cpu-s`` with AdamW Linear-D2Z at ~20 TPP on one source of the study
   corpus (``data.mix={BASE_SOURCE: 1}``: docstrings), keeping its final checkpoint.
2. **probe**: short SGD runs from the base's weights on the other source (prose docs) at LRs 0.3, 1, 3, 10, ...
   (extended upwards while the top one is stable, up to a cap): eta2 = the largest stable one.
3. **pilot**: seed 0's Phi1 (eta1 = eta2/1000), Phi2 (eta2) and Phi3 (eta1 until t_k, then eta2), each from the
   base's weights (``checkpoint.init_from``: a fresh SGD optimizer, schedule and step counter) and Phi3 a branch of
   Phi1 at t_k. A pilot whose Phi2 is unstable over T moves eta2 to the next lower stable LR. The pilot gate
   (:func:`experiments.skiplr_analysis.pilot_check`) refuses the 20 seeds when the transition cannot be observed
   within T; the paper's 1e-6 -> 1e-3 pair gets its own pilot and gate when 1e-3 is stable.
4. **seeds**: seeds 1..19 of the pair (seed 0 is the pilot, reused), and for test (c) seeds 0..9 at eta2/2
   (Phi2 and Phi3 only: Phi1 is shared).

Variant ``scratch`` (issue 13's study): the same three runs per seed from a random initialization on the whole
corpus, eta 3e-3 -> 3, with T derived from the contraction rate that study measured (:func:`scratch_horizon`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .study import RunSpec, fmt

REPO = Path(__file__).resolve().parent.parent
BASE_SOURCE = "RedPajamaGitHub"  # docstrings of the stdlib and the installed packages (data_prep demo-corpus)
FT_SOURCE = "RedPajamaBook"  # prose: the reference manual, the packages' shipped docs and descriptions
PAPER_PAIR = (1e-6, 1e-3)
# The from-scratch study as committed (experiments/results/skiplr-scratch-cpu/report.md, issue 13): median r and g(t_k).
SCRATCH_MEASURED = {"rate": 0.00348, "g0": 0.5157, "source": "experiments/results/skiplr-scratch-cpu/report.md (20 seeds, T = 1000)"}


@dataclass(frozen=True)
class Variant:
    name: str
    config: Path
    seeds: int
    T: int
    t_k: int
    batch: int
    window: int = 10
    eps: float = 0.01
    pretrained: bool = True
    base_tpp: float = 20.0
    probe_lrs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    probe_factor: float = math.sqrt(10.0)
    probe_cap: float = 100.0
    probe_steps: int = 200
    halving_seeds: int = 10
    dropout: float = 0.1  # HF's default (GPT2): each seed its own dropout draws
    eta1: float = math.nan  # scratch: fixed LRs
    eta2: float = math.nan
    eta2_guess: float = 3.0  # pretrained: the eta2 the dry run prices before the probe has run
    paper_pair: bool = True
    extra: tuple[str, ...] = ()


CPU = REPO / "configs/studies/cpu.yaml"
VARIANTS = {
    ("pretrained", "cpu"): Variant("pretrained", CPU, seeds=20, T=1000, t_k=200, batch=8),
    ("pretrained", "tiny"): Variant("pretrained", CPU, seeds=2, T=40, t_k=10, batch=4, base_tpp=0.5, probe_lrs=(0.3, 1.0),
                                    probe_cap=1.0, probe_steps=20, halving_seeds=2, paper_pair=False),
    ("scratch", "cpu"): Variant("scratch", CPU, seeds=20, T=0, t_k=200, batch=8, pretrained=False, eta1=3e-3, eta2=3.0,
                                dropout=0.0, halving_seeds=0, paper_pair=False),
    ("scratch", "tiny"): Variant("scratch", CPU, seeds=1, T=20, t_k=10, batch=4, pretrained=False, eta1=1e-3, eta2=1.0,
                                 dropout=0.0, halving_seeds=0, paper_pair=False),
    # The paper's pretraining row: Phi-3-mini from scratch with SGD on UltraTextbooks, 1e-6 -> 1e-3.
    ("scratch", "full"): Variant("scratch", REPO / "configs/phi3_mini.yaml", seeds=5, T=10000, t_k=2500, batch=8,
                                 pretrained=False, eta1=1e-6, eta2=1e-3, dropout=0.0, halving_seeds=0, paper_pair=False,
                                 extra=("model.activation_checkpointing=true",)),
}


def variant(name: str, scale: str) -> Variant:
    if (name, scale) not in VARIANTS:
        known = ", ".join(f"--variant {v} --scale {s}" for v, s in VARIANTS)
        why = (" (the pretrained variant at full scale needs a pretrained Hugging Face model: run `--variant scratch "
               "--scale full`, or fine-tune with model.init_from=hf:DIR via --set)") if scale == "full" else ""
        raise ValueError(f"skiplr has no variant {name!r} at scale {scale!r}{why}; known: {known}")
    v = VARIANTS[(name, scale)]
    if name == "scratch" and v.T == 0:
        import dataclasses

        v = dataclasses.replace(v, T=scratch_horizon(v))
    return v


def scratch_horizon(v: Variant) -> int:
    """T of the from-scratch variant: long enough for the committed study's measured r to cross (1.5 x margin)."""
    from .skiplr_analysis import scratch_T

    T = scratch_T(SCRATCH_MEASURED["rate"], SCRATCH_MEASURED["g0"], v.t_k, v.eps)
    if T is None:
        raise ValueError(f"skiplr --variant scratch: the measured r = {SCRATCH_MEASURED['rate']} cannot cross eps within "
                         "the step cap; the from-scratch study cannot show a transition")
    return T


# -- run specs --------------------------------------------------------------------------------------

def base_steps(v: Variant, overrides: Sequence[str] = ()) -> int:
    """Updates of the base run: base_tpp x parameters / tokens per update (vocabulary from the data's manifest,
    else the study corpus's 1024)."""
    from .estimate import offline_config

    cfg, manifest = offline_config(v.config, [*overrides, "train.tokens_per_param=null", "train.max_steps=1"])
    if manifest is None:
        cfg.model.vocab_size = 1024
    tokens = cfg.train.global_batch_size * cfg.data.seq_len
    return max(1, int(math.ceil(v.base_tpp * cfg.model.num_params() / tokens)))


def base_run(v: Variant, steps: int) -> RunSpec:
    return RunSpec("base", (f"data.mix={{{BASE_SOURCE}: 1.0}}", "train.tokens_per_param=null", f"train.max_steps={steps}",
                            "train.seed=0", *v.extra),
                   {"role": "base", "stage": "base", "seed": 0, "lr": None, "pair": ""}, keep=(steps,))


def _sgd(v: Variant, seed: int, lr: float, T: int) -> tuple[str, ...]:
    data = (f"data.mix={{{FT_SOURCE}: 1.0}}", f"model.dropout={v.dropout}") if v.pretrained else ()
    return (
        "optimizer.name=sgd", "optimizer.momentum=0.0", "optimizer.weight_decay=0.0", "optimizer.grad_clip=1.0",
        f"optimizer.lr={lr}", "schedule.name=constant", "schedule.warmup_steps=0", "schedule.end_ratio=null",
        "train.tokens_per_param=null", "train.max_tokens=null", f"train.max_steps={T}",
        f"train.global_batch_size={v.batch}", f"train.micro_batch_size={v.batch}", "train.global_batch_tokens=null",
        f"train.seed={seed}", "logging.interval=10", *data, *v.extra,
    )


def _init(v: Variant, base: RunSpec | None) -> dict:
    return {"init_from": base.label, "init_step": base.keep[0]} if base is not None else {}


def probe_run(v: Variant, lr: float, base: RunSpec) -> RunSpec:
    return RunSpec(f"probe/lr{fmt(lr)}", _sgd(v, 0, lr, v.probe_steps),
                   {"role": "probe", "stage": "probe", "seed": 0, "lr": lr, "pair": ""}, **_init(v, base))


def pair_name(eta1: float, eta2: float) -> str:
    return f"{fmt(eta1)}->{fmt(eta2)}"


def seed_runs(v: Variant, eta1: float, eta2: float, seed: int, base: RunSpec | None, stage: str) -> list[RunSpec]:
    """Phi1, Phi2 from the base's weights (or from scratch), Phi3 a branch of Phi1 at t_k at eta2."""
    pair = pair_name(eta1, eta2)
    p1, p2, p3 = (f"{pair}/seed{seed}/phi{i}" for i in (1, 2, 3))
    par = {"seed": seed, "pair": pair, "stage": stage}
    return [
        RunSpec(p1, _sgd(v, seed, eta1, v.T), {"role": "phi1", "lr": eta1, **par}, **_init(v, base)),
        RunSpec(p2, _sgd(v, seed, eta2, v.T), {"role": "phi2", "lr": eta2, **par}, **_init(v, base)),
        RunSpec(p3, _sgd(v, seed, eta2, v.T), {"role": "phi3", "lr": eta2, **par}, parent=p1, branch_step=v.t_k),
    ]


def halving_runs(v: Variant, eta1: float, eta2: float, seed: int, base: RunSpec | None) -> list[RunSpec]:
    """Test (c): Phi2 and Phi3 at eta2/2 (Phi3 a branch of the pair's Phi1 at t_k)."""
    pair, half = pair_name(eta1, eta2), eta2 / 2
    par = {"seed": seed, "pair": pair, "stage": "halving", "lr": half}
    return [
        RunSpec(f"{pair}/half/seed{seed}/phi2", _sgd(v, seed, half, v.T), {"role": "phi2-half", **par}, **_init(v, base)),
        RunSpec(f"{pair}/half/seed{seed}/phi3", _sgd(v, seed, half, v.T), {"role": "phi3-half", **par},
                parent=f"{pair}/seed{seed}/phi1", branch_step=v.t_k),
    ]


# -- the stages -------------------------------------------------------------------------------------

# What a finished run gave: (diverged, logged steps, 10-step mean losses); None while it has not finished.
Outcome = tuple[bool, list, list] | None
Lookup = Callable[[RunSpec, list], Outcome]  # (run, every run so far: for the keys of its parents) -> outcome


@dataclass
class Plan:
    runs: list[RunSpec]
    projected: list[RunSpec]  # runs not known yet (the dry run prices them with eta2_guess)
    probe: dict[float, tuple[bool, str]]  # lr -> (stable, why), finished probes
    eta2: float | None  # the probe's pick (None until the probe has finished)
    pilots: dict[str, object]  # pair -> PilotCheck (finished pilots)
    notes: list[str]


def stages(v: Variant, lookup: Lookup, seeds: int | None = None, overrides: Sequence[str] = ()) -> Plan:
    """Every run the study knows it needs now, given the outcomes ``lookup`` reports for the runs before."""
    from .skiplr_analysis import largest_stable, pilot_check, probe_stable

    n_seeds = seeds or v.seeds
    runs: list[RunSpec] = []
    projected: list[RunSpec] = []
    notes: list[str] = []
    pilots: dict[str, object] = {}

    def outcome(spec: RunSpec) -> Outcome:
        return lookup(spec, runs)

    def pair_runs(eta1: float, eta2: float, base: RunSpec | None, halving: bool) -> list[RunSpec]:
        out = []
        for s in range(1, n_seeds):
            out += seed_runs(v, eta1, eta2, s, base, "seeds")
        for s in range(min(v.halving_seeds, n_seeds) if halving else 0):
            out += halving_runs(v, eta1, eta2, s, base)
        return out

    def gated(eta1: float, eta2: float, base: RunSpec | None, halving: bool) -> str:
        """Adds the pair's pilot, and its seeds when the pilot passes; 'wait' | 'go' | 'stop' | 'unstable'."""
        pilot = seed_runs(v, eta1, eta2, 0, base, "pilot")
        runs.extend(pilot)
        got = [outcome(r) for r in pilot]
        if any(g is None for g in got):
            projected.extend(pair_runs(eta1, eta2, base, halving))
            return "wait"
        if got[1][0] or not probe_stable(got[1][1], got[1][2])[0]:
            return "unstable"
        curves = _seed_curves(0, got, v)
        check = pilot_check(curves, v.t_k, v.T, v.eps)
        pilots[pair_name(eta1, eta2)] = check
        if not check.go:
            notes.append(f"pair {pair_name(eta1, eta2)}: the pilot shows the transition cannot be observed within "
                         f"T = {v.T} ({'; '.join(check.reasons)}): its {n_seeds - 1} further seeds are not run")
            return "stop"
        runs.extend(pair_runs(eta1, eta2, base, halving))
        return "go"

    if not v.pretrained:
        gated(v.eta1, v.eta2, None, halving=v.halving_seeds > 0)
        return Plan(runs, projected, {}, v.eta2, pilots, notes)

    base = base_run(v, base_steps(v, overrides))
    runs.append(base)
    lrs = list(v.probe_lrs)
    probe: dict[float, tuple[bool, str]] = {}
    while True:
        for lr in lrs:
            if lr in probe:
                continue
            spec = probe_run(v, lr, base)
            runs.append(spec)
            got = outcome(spec)
            if got is not None:
                probe[lr] = probe_stable(got[1], got[2], diverged=got[0])
        top = max(lrs)
        if top in probe and probe[top][0] and top * v.probe_factor <= v.probe_cap * (1 + 1e-9):
            lrs.append(float(f"{top * v.probe_factor:.3g}"))  # the top LR is stable: probe one higher
            continue
        break
    if len(probe) < len(lrs):  # the probe is still running
        projected.extend(seed_runs(v, v.eta2_guess / 1000, v.eta2_guess, 0, base, "pilot"))
        projected.extend(pair_runs(v.eta2_guess / 1000, v.eta2_guess, base, True))
        return Plan(runs, projected, probe, None, pilots, notes)
    stable = [lr for lr in sorted(probe, reverse=True) if lr <= (largest_stable(probe) or -1)]
    if not stable:
        notes.append("the probe found no stable SGD learning rate: no pilot, no seeds")
    eta2 = None
    for lr in stable:
        state = gated(lr / 1000, lr, base, halving=True)
        if state == "unstable":
            notes.append(f"eta2 = {fmt(lr)} is unstable over T = {v.T} in the pilot: the next lower stable LR is tried")
            continue
        eta2 = lr
        break
    if v.paper_pair and eta2 is not None and PAPER_PAIR[1] <= eta2:
        if gated(*PAPER_PAIR, base, halving=False) == "unstable":
            notes.append(f"the paper's pair {pair_name(*PAPER_PAIR)} is unstable in its pilot")
    elif v.paper_pair and eta2 is not None:
        notes.append(f"the paper's pair {pair_name(*PAPER_PAIR)} is not run: 1e-3 is above the largest stable LR {fmt(eta2)}")
    return Plan(runs, projected, probe, eta2, pilots, notes)


def _seed_curves(seed: int, got: Sequence[tuple[bool, list, list]], v: Variant):
    """SeedCurves from the (diverged, steps, means) of Phi1, Phi2 and Phi3 (Phi3's logs start after t_k)."""
    import numpy as np

    from .skiplr_analysis import SeedCurves

    (_, s1, m1), (_, s2, m2), (_, s3, m3) = got
    steps = np.asarray(s2, dtype=np.int64)
    l1 = np.interp(steps, s1, m1, left=np.nan, right=np.nan)
    l3 = np.where(steps <= v.t_k, l1, np.interp(steps, s3, m3, left=np.nan, right=np.nan) if len(s3) else np.nan)
    return SeedCurves(seed, steps, l1, np.asarray(m2, dtype=np.float64), l3)
