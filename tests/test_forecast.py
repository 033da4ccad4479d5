"""pretrain.forecast: schedule-aware loss laws, their fit, forecasts and the schedule search (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pretrain.forecast import (
    LAWS,
    FittedLaw,
    ForecastError,
    fit_law,
    lrs_for_config,
    lrs_for_schedule,
    mpl,
    optimize_schedule,
    read_run,
    schedule_override,
    schedule_yaml,
    warmup_of,
)
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


# the MPL authors' fit set: constant, cosine to 10%, a two-stage step decay (x0.3 at 50%)
FIT_SCHEDULES = {"constant": {}, "cosine": {"end_ratio": 0.1}, "step": {"params": {"milestones": [500], "factor": 0.3}}}


def noisy_runs(law: FittedLaw, noise: float, T: int = 1000, seed: int = 0) -> list[tuple]:
    """(lrs, steps, losses) of the fit schedules: the law's curve times log-normal noise."""
    rng = np.random.default_rng(seed)
    runs = []
    for name, kw in FIT_SCHEDULES.items():
        kw = {**kw, "params": {"milestones": [T // 2], "factor": 0.3}} if name == "step" else kw
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
    for k in ("L0", "A", "alpha"):
        assert law.params[k] == pytest.approx(true.params[k], rel=0.05), k
    assert law.params["C"] == pytest.approx(true.params["C"], rel=0.1)  # 1% noise on every point
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
              first_step: int = 1, eval_every: int = 0) -> np.ndarray:
    """A run directory as the trainer writes it: config.yaml and metrics.jsonl (loss of step s: before update s;
    with ``eval_every``, val_loss after update s at its multiples and the last step)."""
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
            rec = {"step": s, "loss": loss, "lr": float(lrs[s - 1]), "tokens": 1024 * s}
            if eval_every and (s % eval_every == 0 or s == lrs.size):
                rec["val_loss"] = float(pred[s - 1] * np.exp(rng.normal(0.0, noise / 10)))
            f.write(json.dumps(rec) + "\n")
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
    # no evaluations in these runs: auto fits training loss over windows of 20 updates, and says so in law.json
    assert "metric: loss (auto" in out and law.settings["signal"] == {"metric": "loss", "window": 20}
    assert all(s["window"] == 20 for s in law.sources)
    ann_path = tmp_path / "annealing.json"
    assert main(["fit", *runs, "--law", "annealing", "--lam", "0.99", "--out", str(ann_path)]) == 0
    capsys.readouterr()
    assert main(["predict", str(law_path), str(ann_path), "--config", DEMO, "train.max_steps=600", "--compare",
                 "constant", "--out", str(tmp_path / "both.png")]) == 0
    both = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("constant")]
    assert [row[2] for row in both] == ["mpl", "annealing"]
    assert float(both[1][3]) == pytest.approx(FittedLaw.load(ann_path).final(lrs_of("constant", 600, 60)), abs=1e-4)

    png = tmp_path / "forecast.png"
    assert main(["predict", str(law_path), "--config", DEMO, "train.max_steps=600", "--compare", "constant",
                 "wsd:decay=0.2,shape=1-sqrt", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("linear", "constant", "wsd"))}
    assert set(rows) == {"linear(end_ratio=0.0)", "constant", "wsd(decay=0.2,"} and "[run]" in rows["linear(end_ratio=0.0)"]
    assert rows["constant"].split()[2] == "mpl"  # which law each figure comes from
    const_final = float(rows["constant"].split()[3])
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


# -- issue 22: the fit set, the signal, lineage-aware curves, scoring as the authors do ---------------

def test_three_run_fit_recovers_the_parameters_and_two_runs_without_a_long_decay_warn():
    true = law_of("mpl", MPL_UNIT)
    law = fit_law(noisy_runs(true, 0.0005), "mpl")
    assert law.unit_params() == pytest.approx(MPL_UNIT, rel=0.1)
    assert not any("anneals over" in w for w in law.warnings)
    assert law.diagnostics["anneal_fraction"]["run2"] == pytest.approx(0.5, abs=0.01)  # the step decay at 50%
    # a constant run and one 20% cooldown: the annealing term is not identified, and the fit says so
    lrs_c, lrs_w = lrs_of("constant"), lrs_of("wsd", params={"decay": 0.2})
    two = [(lrs, np.arange(1, 1001), true.predict(lrs)) for lrs in (lrs_c, lrs_w)]
    warned = fit_law(two, "mpl", starts=2)
    assert any("no fit run anneals over more than 20% of its budget" in w and "run1" in w for w in warned.warnings)
    assert warned.diagnostics["anneal_fraction"]["run1"] == pytest.approx(0.2, abs=0.01)


def test_windowed_training_loss_fit_matches_the_law_over_the_same_windows():
    """Window means of a noiseless curve are fit exactly: the law is averaged over the same windows."""
    from pretrain.forecast import RunCurve
    from pretrain.forecast.fit import windowed

    true = law_of("annealing", ANNEALING_UNIT)
    curves = []
    for i, (lrs, steps, losses) in enumerate(noisy_runs(true, 0.0, T=600)):
        t, y = windowed(steps, losses, 20)
        assert np.all(np.diff(t) == 20) and t[-1] == 600 and (t[0] - 19) >= 1
        assert y[-1] == pytest.approx(losses[-20:].mean())
        curves.append(RunCurve(lrs, t, y, f"run{i}", window=20))
    law = fit_law(curves, "annealing", huber_delta=1.0)
    assert law.unit_params() == pytest.approx(ANNEALING_UNIT, rel=0.02)
    assert law.settings["signal"] == {"metric": "given", "window": 20}
    assert law.predict_curve(curves[1]) == pytest.approx(curves[1].losses, rel=1e-6)


def test_a_branch_curve_is_its_parents_then_its_own_and_scored_on_the_same_window(tmp_path):
    from pretrain.forecast.fit import choose_metric
    from pretrain.forecast.score import score_curve, scored_points

    true = law_of("mpl", MPL_UNIT)
    common = ["train.max_steps=300", "schedule.warmup_steps=30"]
    write_run(tmp_path / "main", common + ["schedule.name=constant", "schedule.end_ratio=null"], true, seed=1,
              eval_every=25)
    wsd = common + ["schedule.name=wsd", "schedule.end_ratio=0.0", "schedule.params={decay: 0.2}"]
    lrs = write_run(tmp_path / "branch", wsd, true, seed=2, first_step=241, eval_every=25)
    (tmp_path / "branch" / "lineage.json").write_text(json.dumps({"parent_run_dir": str(tmp_path / "main"), "step": 240}))
    write_run(tmp_path / "full", wsd, true, seed=3, eval_every=25)
    parent, branch, full = (read_run(tmp_path / d, "loss") for d in ("main", "branch", "full"))
    assert branch.lrs == pytest.approx(lrs) and branch.steps.tolist() == list(range(1, 300))
    before = branch.steps < 240
    assert branch.losses[before] == pytest.approx(parent.losses[parent.steps < 240], rel=0, abs=0)
    assert not np.allclose(branch.losses[~before], parent.losses[parent.steps >= 240])
    # validation loss: the parent's evaluations up to the branch step, then the branch's own
    assert choose_metric([tmp_path / "branch", tmp_path / "full"]) == "val_loss"
    vb, vf, vp = (read_run(tmp_path / d, "val_loss") for d in ("branch", "full", "main"))
    assert vb.steps.tolist() == vf.steps.tolist() == [*range(25, 300, 25), 300]
    assert vb.losses[vb.steps <= 240] == pytest.approx(vp.losses[vp.steps <= 240], rel=0, abs=0)
    # the same windows and the same scored points (the final one at update 300) for the branch and the full run
    wb, wf = read_run(tmp_path / "branch", "loss", 20), read_run(tmp_path / "full", "loss", 20)
    assert wb.steps.tolist() == wf.steps.tolist() and wb.steps[-1] == 299 and wb.window == 20
    assert scored_points(wb).tolist() == scored_points(wf).tolist()
    sb, sf = score_curve(vb, true.predict_curve(vb)), score_curve(vf, true.predict_curve(vf))
    assert sb.points == sf.points and sb.actual_final == vb.losses[-1] and sf.actual_final == vf.losses[-1]


def test_prede_worste_final_error_and_r2_equal_hand_computed_values():
    from pretrain.forecast import RunCurve
    from pretrain.forecast.score import pooled_r2, score_curve

    lrs = np.array([0.5, 1.0, 1.0, 1.0, 0.5, 0.25])  # warmup of 2 updates: points after it are scored
    curve = RunCurve(lrs, np.array([1, 3, 4, 5, 6]), np.array([9.0, 4.0, 5.0, 2.0, 1.0]), "hand")
    pred = np.array([0.0, 5.0, 5.0, 1.0, 1.5])  # the first point lies in the warmup: not scored
    sc = score_curve(curve, pred)
    rel = [1 / 4, 0.0, 1 / 2, 1 / 2]
    assert sc.points == 4 and sc.prede == pytest.approx(np.mean(rel)) and sc.worste == pytest.approx(0.5)
    assert sc.final_err == pytest.approx(0.5) and sc.actual_final == 1.0 and sc.predicted_final == 1.5
    # R² = 1 - SS_res / SS_tot over 4, 5, 2, 1 (mean 3): SS_tot = 1 + 4 + 1 + 4 = 10, SS_res = 1 + 0 + 1 + 0.25
    assert sc.r2 == pytest.approx(1 - 2.25 / 10)
    assert sc.stable_prede == pytest.approx(np.mean([1 / 4, 0.0])) and sc.decay_prede == pytest.approx(np.mean([1 / 2, 1 / 2]))
    other = RunCurve(lrs, np.array([3, 6]), np.array([7.0, 3.0]), "other")
    # pooled over both curves' scored points: 4, 5, 2, 1, 7, 3 (mean 11/3)
    a = np.array([4, 5, 2, 1, 7, 3.0])
    p = np.array([5, 5, 1, 1.5, 7, 3.0])
    assert pooled_r2([curve, other], [pred, np.array([7.0, 3.0])]) == pytest.approx(
        1 - np.sum((a - p) ** 2) / np.sum((a - a.mean()) ** 2))


def test_the_law_beats_the_shifted_constant_baseline_and_ranks_with_an_interval():
    from pretrain.forecast import RunCurve
    from pretrain.forecast.score import ShiftBaseline, score_runs, spearman_interval

    true = law_of("mpl", MPL_UNIT)
    fit = [RunCurve(lrs, steps, losses, f"fit{i}") for i, (lrs, steps, losses) in enumerate(noisy_runs(true, 0.0))]
    base = ShiftBaseline.fit(fit)
    const_scores, _ = score_runs(base.predict_curve, fit[:1])
    assert const_scores[0].prede < 0.005  # the constant run's own curve
    held = [RunCurve(lrs, np.arange(1, 1001), true.predict(lrs), name) for name, lrs in (
        ("d2z", lrs_of("linear", end_ratio=0.0)), ("10x", lrs_of("linear", end_ratio=0.1)),
        ("wsd", lrs_of("wsd", params={"decay": 0.2})))]
    law = fit_law(fit, "mpl")
    law_scores, law_sum = score_runs(law.predict_curve, held)
    base_scores, base_sum = score_runs(base.predict_curve, held)
    assert law_sum.prede < 0.002 and law_sum.prede < base_sum.prede / 3 and law_sum.r2_pooled > 0.99
    actual = np.array([[s.actual_final for s in law_scores]] * 2) + np.array([[0.0], [0.001]])
    rho, lo, hi, per_seed = spearman_interval(actual, np.array([[s.predicted_final for s in law_scores]] * 2))
    assert rho == 1.0 and lo == 1.0 and per_seed == [1.0, 1.0]
    rho, lo, hi, _ = spearman_interval(actual, -actual)
    assert rho == -1.0 and hi == -1.0


def test_the_study_fits_on_the_authors_set_and_holds_out_the_rest():
    from experiments import forecast

    study = forecast.build("tiny")
    roles: dict[str, list] = {}
    for r in study.runs:
        roles.setdefault(r.params["role"], []).append(r)
        assert any(o.startswith("eval.interval=") and 0 < int(o.split("=")[1]) <= 25 for o in r.overrides), r.label
    assert sorted({r.params["seed"] for r in study.runs}) == [0, 1]
    assert {r.params["schedule"] for r in roles["fit"]} == {"Constant", "Cosine-10x", "Step-x0.3@50%"}
    held = {r.params["schedule"] for r in roles["held-out"]}
    T = roles["fit"][0].params["steps"]
    assert {"Linear-D2Z", "Linear-10x", "Cosine-D2Z", "Cosine-10x@2T"} <= held
    assert len({r.params["schedule"] for r in roles["held-out"] if r.params["steps"] == T}) >= 5
    assert any(r.params["steps"] == 2 * T for r in roles["held-out"])
    branches = [r for r in roles["held-out"] if r.parent]
    assert branches and all(r.parent.startswith("fit:Constant/") for r in branches)
    step = study.load_config(study.spec("fit:Step-x0.3@50%/seed0"))
    mult = np.asarray(step.build_schedule().multipliers())
    first_drop = int(np.flatnonzero(np.diff(mult) < 0)[0]) + 2  # the 1-based update that runs at x0.3
    assert mult[-1] == pytest.approx(0.3) and abs(first_drop - T / 2) <= 1


def test_the_study_report_scores_both_laws_and_the_baseline(tmp_path):
    """The report on synthetic finished runs (the law's curves, no training): laws fit per seed, every held-out
    run scored by both laws and the baseline, the bars judged, the optimized schedule against Linear-D2Z."""
    from experiments import forecast
    from experiments.runner import RESULT, RunRecord, StudyResults

    # T = 242 updates (priced without data, so the same whether or not data/study was built here): a cheap report
    small = ("train.global_batch_size=16", f"data.path={tmp_path / 'no-data'}")
    study = forecast.build("tiny", overrides=small)
    lr = forecast.SCALES["tiny"].lr
    true = FittedLaw("mpl", LAWS["mpl"].to_raw(MPL_UNIT, lr), lr)  # the law's typical curve at the study's LR
    out = tmp_path / "study"
    records = {}
    lrs_by_label = {}
    for spec in study.runs:  # parents first: the study lists a constant run before its branches
        key = study.key(spec)
        run_dir = out / "runs" / key
        run_dir.mkdir(parents=True)
        cfg = study.load_config(spec)
        T = cfg.train.max_steps
        if spec.parent:
            parent = lrs_by_label[spec.parent]
            b = spec.branch_step
            sched = ScheduleConfig("cooldown", warmup_steps=0, end_ratio=0.0,
                                   params={"shape": cfg.schedule.params["shape"], "start_step": b, "start_lr": parent[b - 1]})
            lrs = np.concatenate([parent[:b], lrs_for_schedule(sched, cfg.optimizer.lr, T)[b:]])
            first = b + 1
            parent_dir = out / "runs" / study.key(study.spec(spec.parent))
            (run_dir / "lineage.json").write_text(json.dumps({"parent_run_dir": str(parent_dir), "step": b}))
        else:
            lrs, first = lrs_for_config(cfg), 1
        lrs_by_label[spec.label] = lrs
        pred = true.predict(lrs)
        rng = np.random.default_rng(len(records))
        with open(run_dir / "metrics.jsonl", "w") as f:
            for s in range(first, T + 1):
                rec = {"step": s, "loss": float(pred[max(s - 2, 0)] * np.exp(rng.normal(0, 0.01))), "lr": float(lrs[s - 1])}
                if s % 5 == 0 or s == T:
                    rec["val_loss"] = float(pred[s - 1] * np.exp(rng.normal(0, 0.0005)))
                f.write(json.dumps(rec) + "\n")
        (run_dir / RESULT).write_text("{}")
        records[spec.label] = RunRecord(spec, key, run_dir, "done", final_val_loss=float(pred[-1]))
    # the optimized schedule: added once seed 0's fit runs are done, then "trained" on both seeds
    grown = forecast.build("tiny", out=out, overrides=small)
    assert (out / "laws" / "mpl-seed0.json").is_file()
    for seed in (0, 1):
        spec = grown.spec(f"optimized/seed{seed}")
        lrs = lrs_for_config(grown.load_config(spec))
        run_dir = out / "runs" / grown.key(spec)
        run_dir.mkdir(parents=True)
        pred = true.predict(lrs)
        run_dir.joinpath("metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": float(pred[max(s - 2, 0)]), "lr": float(lrs[s - 1]),
                        **({"val_loss": float(pred[s - 1])} if s % 5 == 0 or s == lrs.size else {})}) + "\n"
            for s in range(1, lrs.size + 1)))
        records[spec.label] = RunRecord(spec, grown.key(spec), run_dir, "done", final_val_loss=float(pred[-1]))
    text = grown.report(StudyResults(grown, records, out), out)
    (tmp_path / "report.md").write_text(text)
    assert "No held-out run" not in text and "**mpl**, seed 1" in text and "**annealing**, seed 0" in text
    held = [r for r in grown.runs if r.params["role"] == "held-out"]
    summary = json.loads((out / "forecast.json").read_text())["_summary"]
    assert summary["mpl"]["runs"] == summary["annealing"]["runs"] == summary["baseline"]["runs"] == len(held)
    assert summary["mpl"]["prede"] < 0.003 and summary["mpl"]["prede"] < summary["baseline"]["prede"] / 3
    assert "REPRODUCED** MPL: median PredE" in text and "MPL beats the trivial baseline on PredE" in text
    assert "mpl: ranking of the 5 held-out schedules of 242 updates" in text
    assert "lam = " in text and "(chosen by the fit)" in text
    assert "Signal: the MPL fit on validation loss" in text and (out / "laws" / "mpl-loss20-seed1.json").is_file()
    assert "Optimized schedule `schedule=" in text and "seed 1:" in text
    assert (out / "forecast_curves.png").stat().st_size > 10_000
