"""pretrain.forecast: schedule-aware loss laws, their fit, forecasts and the schedule search (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pretrain.forecast import (FittedLaw, ForecastError, LAWS, fit_law, lrs_for_config, lrs_for_schedule, mpl,
                               optimize_schedule, read_run, schedule_override, schedule_yaml, warmup_of)
from pretrain.forecast.__main__ import main
from pretrain.forecast.laws import annealing
from pretrain.run_config import load_run_config
from pretrain.schedules import ScheduleConfig
from tests.conftest import ROOT, run_pretrain, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
PEAK = 3e-3
MPL_UNIT = np.array([3.0, 30.0, 0.5, 0.5, 0.1, 0.6, 0.6])  # L0, A, alpha, B, C, beta, gamma over lrs / PEAK
ANNEALING_UNIT = np.array([3.0, 30.0, 0.5, 3e-4])  # L0, A, alpha, C


def law_of(name: str, unit: np.ndarray) -> FittedLaw:
    options = {"lam": 0.999} if name == "annealing" else {}
    return FittedLaw(name, LAWS[name].to_raw(unit, PEAK), PEAK, options)


def lrs_of(name: str, T: int = 1000, W: int = 100, **kw) -> np.ndarray:
    return lrs_for_schedule(ScheduleConfig(name, warmup_steps=W, **kw), PEAK, T)


FIT_SCHEDULES = {"constant": {}, "cosine": {}, "wsd": {"params": {"decay": 0.3}}}


def noisy_runs(law: FittedLaw, noise: float, T: int = 1000, seed: int = 0) -> list[tuple]:
    """(lrs, steps, losses) of the fit schedules: the law's curve times log-normal noise."""
    rng = np.random.default_rng(seed)
    runs = []
    for name, kw in FIT_SCHEDULES.items():
        lrs = lrs_of(name, T, **kw)
        steps = np.arange(1, T + 1)
        runs.append((lrs, steps, law.predict(lrs) * np.exp(rng.normal(0.0, noise, T))))
    return runs


# -- the laws ----------------------------------------------------------------------------------

def test_mpl_is_the_papers_sum_and_its_jacobian_is_exact():
    T, W = 120, 12
    lrs = lrs_of("wsd", T, W, params={"decay": 0.4, "shape": "cosine"}, end_ratio=0.0) / PEAK
    assert warmup_of(lrs) == W
    L0, A, alpha, B, C, beta, gamma = MPL_UNIT

    def by_definition(t: int) -> float:
        ld = sum((lrs[k - 2] - lrs[k - 1]) * (1 - (C * max(lrs[k - 1], 1e-12) ** -gamma * lrs[k - 1:t].sum() + 1) ** -beta)
                 for k in range(W + 1, t + 1))
        return L0 + A * lrs[:t].sum() ** -alpha - B * ld

    assert mpl(lrs, MPL_UNIT) == pytest.approx([by_definition(t) for t in range(1, T + 1)], rel=1e-12)
    steps = np.array([20, 70, 100, 119, 120])
    for fn, p in ((mpl, MPL_UNIT), (annealing, ANNEALING_UNIT)):
        _, J = fn(lrs, p, steps, jac=True)
        for i in range(p.size):
            h = 1e-6 * max(abs(p[i]), 1e-2)
            e = np.eye(p.size)[i] * h
            fd = (fn(lrs, p + e, steps) - fn(lrs, p - e, steps)) / (2 * h)
            assert J[:, i] == pytest.approx(fd, rel=1e-5, abs=1e-7), f"{fn.__name__} d/d{i}"


def test_parameters_are_in_absolute_lr_units():
    """The same law, evaluated over lrs / lr_ref, gives the same curve whatever lr_ref."""
    law = law_of("mpl", MPL_UNIT)
    lrs = lrs_of("cosine", 300, 30)
    moved = FittedLaw("mpl", law.params, lr_ref=1.0)
    assert moved.predict(lrs) == pytest.approx(law.predict(lrs), rel=1e-10)
    assert law.predict(lrs) == pytest.approx(mpl(lrs / PEAK, MPL_UNIT), rel=1e-12)


@pytest.mark.parametrize("name,unit", [("mpl", MPL_UNIT), ("annealing", ANNEALING_UNIT)])
@pytest.mark.parametrize("W", [0, 50])
def test_constant_schedule_reduces_to_the_constant_lr_power_law(name, unit, W):
    law = law_of(name, unit)
    T = 500
    lrs = lrs_of("constant", T, W)
    t = np.arange(1, T + 1)
    S = np.cumsum(lrs)  # the warmup's area, then eta * (t - W)
    L0, A, alpha = (law.params[k] for k in ("L0", "A", "alpha"))
    assert law.predict(lrs) == pytest.approx(L0 + A * S ** -alpha, rel=1e-12)
    after = t >= max(W, 1)
    assert S[after] == pytest.approx(S[max(W, 1) - 1] + PEAK * (t[after] - max(W, 1)), rel=1e-12)


# -- fitting -----------------------------------------------------------------------------------

def test_fit_recovers_the_annealing_law_from_noisy_curves():
    true = law_of("annealing", ANNEALING_UNIT)
    law = fit_law(noisy_runs(true, 0.01), "annealing")
    for k in ("L0", "A", "alpha", "C"):
        assert law.params[k] == pytest.approx(true.params[k], rel=0.05), k
    assert law.diagnostics["mean_rel_err"] < 0.01 and not law.warnings


def test_fit_recovers_the_mpl_from_noisy_curves_and_forecasts_unseen_schedules():
    true = law_of("mpl", MPL_UNIT)
    law = fit_law(noisy_runs(true, 0.002), "mpl")
    for k in ("L0", "A", "alpha"):
        assert law.params[k] == pytest.approx(true.params[k], rel=0.02), k
    assert law.params["B"] == pytest.approx(true.params["B"], rel=0.3)
    assert law.params["gamma"] == pytest.approx(true.params["gamma"], rel=0.2)
    assert law.diagnostics["mean_rel_err"] < 0.002
    # schedules it never saw: their whole curves and final losses
    for lrs in (lrs_of("linear", end_ratio=0.0), lrs_of("wsd", params={"decay": 0.15, "shape": "1-sqrt"}),
                lrs_of("step", params={"milestones": [600, 850]})):
        assert law.predict(lrs)[150:] == pytest.approx(true.predict(lrs)[150:], rel=0.006)
        assert law.final(lrs) == pytest.approx(true.final(lrs), rel=0.002)
    assert law.sources[0]["max_steps"] == 1000 and law.lr_ref == PEAK


def test_fit_without_noise_recovers_every_mpl_parameter():
    true = law_of("mpl", MPL_UNIT)
    law = fit_law(noisy_runs(true, 0.0), "mpl", huber_delta=1.0)
    assert law.unit_params() == pytest.approx(MPL_UNIT, rel=0.02)


def test_fit_warns_when_no_run_decays():
    true = law_of("mpl", MPL_UNIT)
    lrs = lrs_of("constant")
    law = fit_law([(lrs, np.arange(1, 1001), true.predict(lrs))], "mpl")
    assert any("no fit run decays" in w and "B, C, beta, gamma" in w for w in law.warnings)
    assert law.diagnostics["decay_in_fit"] is False
    assert law.params["L0"] == pytest.approx(true.params["L0"], rel=0.02)


def test_law_json_round_trip_and_errors_name_file_and_key(tmp_path):
    law = fit_law(noisy_runs(law_of("annealing", ANNEALING_UNIT), 0.01, T=300), "annealing", starts=2)
    path = law.save(tmp_path / "law.json")
    back = FittedLaw.load(path)
    lrs = lrs_of("cosine", 300, 30)
    assert back.predict(lrs) == pytest.approx(law.predict(lrs), rel=1e-12)
    assert back.options == {"lam": 0.999} and back.sources[0]["peak_lr"] == PEAK
    with pytest.raises(ForecastError, match=r"law.json: law: expected 'mpl', got 'annealing'"):
        FittedLaw.load(path, expect_law="mpl")
    data = json.loads(path.read_text())
    del data["params"]["C"]
    path.write_text(json.dumps(data))
    with pytest.raises(ForecastError, match=r"law.json: params.C: expected a finite number"):
        FittedLaw.load(path)
    path.write_text(json.dumps({**data, "law": "power"}))
    with pytest.raises(ForecastError, match=r"law.json: law: expected one of mpl, annealing"):
        FittedLaw.load(path)
    path.write_text("{not json")
    with pytest.raises(ForecastError, match=r"law.json: not JSON"):
        FittedLaw.load(path)
    with pytest.raises(ForecastError, match=r"missing.json not found"):
        FittedLaw.load(tmp_path / "missing.json")


# -- run directories ---------------------------------------------------------------------------

def write_run(run_dir: Path, overrides: list[str], law: FittedLaw, noise: float = 0.003, seed: int = 0,
              first_step: int = 1) -> np.ndarray:
    """A run directory as the trainer writes it: config.yaml and metrics.jsonl (loss of step s: before update s)."""
    cfg = load_run_config(DEMO, overrides)
    lrs = lrs_for_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    pred = law.predict(lrs)
    rng = np.random.default_rng(seed)
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "tokens": 0, "val_loss": 9.0}) + "\n")
        for s in range(first_step, lrs.size + 1):
            loss = 9.0 if s == 1 else float(pred[s - 2] * np.exp(rng.normal(0.0, noise)))
            f.write(json.dumps({"step": s, "loss": loss, "lr": float(lrs[s - 1]), "tokens": 1024 * s}) + "\n")
    return lrs


def test_read_run_and_its_errors(tmp_path):
    true = law_of("mpl", MPL_UNIT)
    lrs = write_run(tmp_path / "a", ["train.max_steps=300"], true, noise=0.0)
    run = read_run(tmp_path / "a")
    assert run.lrs == pytest.approx(lrs) and run.info["schedule"] == "linear" and run.info["warmup_steps"] == 30
    # the training loss of step s is measured before update s: the law at s - 1 updates
    assert run.steps[0] == 1 and run.losses[5] == pytest.approx(true.predict(lrs, [6])[0])
    with pytest.raises(ForecastError, match=r"nothing/metrics.jsonl not found: .*nothing is not a run directory"):
        read_run(tmp_path / "nothing")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    with pytest.raises(ForecastError, match=r"b/metrics.jsonl: step 1: no numeric 'lr'"):
        read_run(tmp_path / "b")
    # a branch: the LRs before its first step come from the parent named in lineage.json
    write_run(tmp_path / "branch", ["train.max_steps=300"], true, first_step=101)
    with pytest.raises(ForecastError, match=r"no LR for steps 1..100"):
        read_run(tmp_path / "branch")
    (tmp_path / "branch" / "lineage.json").write_text(json.dumps({"parent_run_dir": str(tmp_path / "a"), "step": 100}))
    assert read_run(tmp_path / "branch").lrs == pytest.approx(lrs)


def test_cli_fit_predict_optimize(tmp_path, capsys):
    true = law_of("mpl", MPL_UNIT)
    runs = []
    for i, ov in enumerate([["schedule.name=constant", "schedule.end_ratio=null"], ["schedule.name=cosine"],
                            ["schedule.name=wsd", "schedule.params={decay: 0.3}"]]):
        runs.append(str(tmp_path / f"run{i}"))
        write_run(Path(runs[-1]), ov + ["train.max_steps=600"], true, seed=i)
    law_path = tmp_path / "law.json"
    assert main(["fit", *runs, "--law", "mpl", "--out", str(law_path), "--plot", str(tmp_path / "fit.png")]) == 0
    out = capsys.readouterr().out
    assert "fitted mpl to 3 run(s)" in out and "alpha" in out and "in-sample: RMSE" in out
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    law = FittedLaw.load(law_path, expect_law="mpl")
    assert [s["run_dir"] for s in law.sources] == runs

    png = tmp_path / "forecast.png"
    assert main(["predict", str(law_path), "--config", DEMO, "train.max_steps=600", "--compare", "constant",
                 "wsd:decay=0.2,shape=1-sqrt", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("linear", "constant", "wsd"))}
    assert set(rows) == {"linear(end_ratio=0.0)", "constant", "wsd(decay=0.2,"} and "[run]" in rows["linear(end_ratio=0.0)"]
    const_final = float(rows["constant"].split()[2])
    assert const_final == pytest.approx(law.final(lrs_of("constant", 600, 60)), abs=1e-4)
    assert png.stat().st_size > 10_000

    snippet = tmp_path / "best.yaml"
    assert main(["optimize", str(law_path), "--config", DEMO, "train.max_steps=600", "--family", "wsd",
                 "--out", str(snippet)]) == 0
    out = capsys.readouterr().out
    assert "best: wsd(" in out and "python pretrain.py --config" in out
    section = yaml.safe_load(snippet.read_text())["schedule"]
    assert section["name"] == "wsd" and section["warmup_steps"] == 60


def test_cli_errors_name_the_input(tmp_path, capsys):
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "law.json")]) == 2
    assert f"{tmp_path}/metrics.jsonl not found" in capsys.readouterr().err
    law_path = law_of("mpl", MPL_UNIT).save(tmp_path / "law.json")
    assert main(["predict", str(law_path), "--config", DEMO, "--compare", "nosuch"]) == 2
    assert "name" in capsys.readouterr().err
    assert main(["predict", str(law_path), "--config", DEMO, "--compare", "wsd:decay=0.95", "schedule.warmup_steps=20"]) == 2
    assert "params.decay" in capsys.readouterr().err


# -- the schedule search -----------------------------------------------------------------------

@pytest.mark.parametrize("family", ["wsd", "linear", "steps"])
def test_optimized_schedule_is_registered_loads_and_beats_a_grid(family):
    law = law_of("mpl", MPL_UNIT)
    T, W = 400, 40
    report: list = []
    cfg, final = optimize_schedule(law, PEAK, T, W, family, maxiter=15, report=report)
    assert min(r[2] for r in report) == final and all(isinstance(r[3], list) for r in report)
    lrs = lrs_for_schedule(cfg, PEAK, T)
    assert final == pytest.approx(law.final(lrs), rel=1e-12)
    assert lrs.max() == pytest.approx(PEAK) and warmup_of(lrs) == W
    # the snippet, given as an override of the demo config, is the same schedule
    run = load_run_config(DEMO, [f"train.max_steps={T}", schedule_override(cfg)])
    assert lrs_for_config(run) == pytest.approx(lrs, rel=1e-12)
    assert yaml.safe_load(schedule_yaml(cfg))["schedule"]["name"] == cfg.name
    if family == "wsd":  # no worse than a grid over the same family
        grid = [law.final(lrs_for_schedule(ScheduleConfig("wsd", warmup_steps=W, end_ratio=e,
                                                          params={"decay": d, "shape": s}), PEAK, T))
                for d in (0.1, 0.2, 0.3, 0.4, 0.5) for s in ("linear", "cosine", "1-sqrt") for e in (0.0, 0.05)]
        assert final <= min(grid) + 1e-6
    assert final < law.final(lrs_of("linear", T, W, end_ratio=0.1)) + 1e-6


def test_optimized_schedule_trains(tiny_data, tmp_path):
    """The best schedule, as the snippet says, runs in the trainer with exactly the forecast's LRs."""
    law = law_of("mpl", MPL_UNIT)
    T, W = 6, 1
    cfg, _ = optimize_schedule(law, PEAK, T, W, "wsd", maxiter=5)
    run_dir = tmp_path / "run"
    override = schedule_override(cfg)
    res = run_pretrain(["--config", DEMO, *tiny_overrides(tiny_data, run_dir, **{"eval.interval": 0}), override])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in recs if r.get("step")]
    assert lrs == pytest.approx(list(lrs_for_schedule(cfg, PEAK, T)), rel=1e-12, abs=1e-15)
