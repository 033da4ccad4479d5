"""The experiment harness end to end on tiny real data: every study runs, reports, and resumes without redoing runs."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import build_study
from experiments.__main__ import main as experiments_main
from experiments.runner import RESULT

ROOT = Path(__file__).resolve().parent.parent


def _rows(out: Path) -> list[dict]:
    with open(out / "runs.csv") as f:
        return list(csv.DictReader(f))


def test_run_names_hash_what_determines_the_result():
    study = build_study("d2z", "tiny")
    keys = {r.label: study.key(r) for r in study.runs}
    assert len(set(keys.values())) == len(keys)  # every run has its own name
    again = build_study("d2z", "tiny", overrides=["logging.interval=5", "run_dir=/elsewhere"])
    assert {r.label: again.key(r) for r in again.runs} == keys  # where it writes does not name it
    other = build_study("d2z", "tiny", overrides=["optimizer.weight_decay=0.2"])
    assert all(other.key(r) != keys[r.label] for r in other.runs)
    skip = build_study("skiplr", "tiny", variant="scratch")  # the pretrained variant's branches appear as it runs
    phi3 = next(r for r in skip.runs if r.params["role"] == "phi3")
    phi2 = next(r for r in skip.runs if r.params["role"] == "phi2" and r.params["seed"] == phi3.params["seed"])
    assert phi3.overrides == phi2.overrides and skip.key(phi3) != skip.key(phi2)  # the branch point names it


def test_dry_run_shows_the_full_scale_plan_without_data(capsys):
    assert experiments_main(["wsd", "--scale", "full", "--dry-run", "--no-calibrate", "--out", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "data missing: data/slimpajama/tokens" in out
    line = next(l for l in out.splitlines() if l.startswith("seed0/Linear-D2Z/tpp80"))
    cols = line.split()
    assert cols[2] == "616.77M" and cols[5] == "80.0"  # params, TPP
    assert int(cols[3]) == -(-80 * 616_770_000 // (504 * 2048)) or abs(int(cols[3]) - 47803) <= 1  # steps from TPP
    # alpha x T with muP: the hidden matrices' LR is the base LR / m, m = 2048 / 256
    assert float(cols[7]) == pytest.approx(0.016 / 8 * 0.1 * int(cols[3]), rel=0.01)
    assert "<- seed0/main@" in out


def test_d2z_tiny_runs_reports_and_reuses_finished_runs(tiny_data, tmp_path, capsys):
    out = tmp_path / "d2z"
    args = ["d2z", "--scale", "tiny", "--out", str(out), "--set", f"data.path={tiny_data}", "--set", "eval.max_samples=16",
            "--slots", "1"]  # in this process (standing workers: tests/test_study_workers.py)
    assert experiments_main(args + ["--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "time: calibrated (fp32" in dry
    assert "training tokens" in dry
    assert experiments_main(args) == 0
    rows = _rows(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert all(float(r["final_val_loss"]) > 0 and int(r["steps"]) > 0 for r in rows)
    report = (out / "report.md").read_text()
    assert "Delta = (L Linear-10x - L Linear-D2Z)" in report and "### Verdicts" in report
    assert "paired t over 2 seeds" in report  # the tiny grid is fixed (one LR): its arms sit at the edge
    assert f"Corpus `{tiny_data}`: sha256 " in report and "differs from the committed results' corpus" in report
    assert "**INCONCLUSIVE** 10x is no worse" in report and "Linear-10x at 0.05 TPP is capped" in report
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0] == "key,parent,step,loss,val_loss,lr" and len(curves) > 4
    assert (out / "d2z_loss_vs_lr.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob(f"runs/*/{RESULT}")}
    assert len(stamps) == 4
    assert experiments_main(args) == 0  # nothing left to train: every run is reused
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"runs/*/{RESULT}")} == stamps
    assert "0 to train" in capsys.readouterr().out


def test_skiplr_killed_mid_study_resumes_without_redoing_finished_runs(tiny_data, tmp_path):
    out = tmp_path / "skiplr"
    args = ["skiplr", "--variant", "scratch", "--scale", "tiny", "--out", str(out), "--set", f"data.path={tiny_data}",
            "--set", "eval.max_samples=16", "--no-calibrate"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "experiments", *args, "--slots", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(out.glob(f"runs/*/{RESULT}")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the study finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the harness and its runs, mid-study
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob(f"runs/*/{RESULT}")}
    assert 1 <= len(finished) < 3
    assert experiments_main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # reused, not redone
    rows = _rows(out)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    phi3 = [r for r in rows if r["role"] == "phi3"]
    assert all(r["parent"].endswith("phi1") and r["branch_step"] == "10" for r in phi3)
    for r in phi3:  # a branch trains only after its branch point, from its parent's checkpoint
        lineage = json.loads((Path(r["run_dir"]) / "lineage.json").read_text())
        assert "step_00000010" in json.dumps(lineage)
    report = (out / "report.md").read_text()
    assert "Pilot (seed 0)" in report and "Gate:" in report  # the scratch variant's report (tests/test_skiplr.py: its tables)


def test_wsd_tiny_branches_cooldowns_and_merges(tiny_data, tmp_path):
    out = tmp_path / "wsd"
    args = ["wsd", "--scale", "tiny", "--out", str(out), "--set", f"data.path={tiny_data}",
            "--set", "eval.max_samples=16", "--no-calibrate", "--slots", "1"]
    assert experiments_main(args) == 0
    rows = _rows(out)
    assert {r["status"] for r in rows} == {"done"}
    main = next(r for r in rows if r["role"] == "main")
    cooldowns = [r for r in rows if "cooldown" in r["role"]]
    assert cooldowns and all(r["parent"] == main["label"] for r in cooldowns)
    assert all(int(r["steps"]) == int(r["branch_step"]) + round(0.2 * int(r["steps"])) or r["tpp"] == "wsm"
               for r in cooldowns)
    assert {r["role"] for r in cooldowns} >= {"wsm-cooldown-linear", "wsm-cooldown-1-sqrt"}
    report = (out / "report.md").read_text()
    assert "WSM: merges of the main run's checkpoints" in report and "not computed" not in report
    assert "decay:1-sqrt merge over 40% of the run is no worse" in report
    assert "Compute, for ONE cooldown shape" in report and "% saved per seed" in report
    assert "a 1-sqrt cooldown beats a linear cooldown" in report
    cached = sorted((out / "wsm").glob("*/*.json"))
    assert [p.name for p in cached] == ["decay-1-sqrt-d40.json", "decay-linear-d40.json", "uniform-4-d40.json"]
    linear = json.loads(cached[1].read_text())
    assert linear["method"] == "decay:linear" and linear["steps"][-1] - linear["steps"][0] == round(0.4 * int(main["steps"]))


def test_emit_slurm_writes_one_array_per_wave(tmp_path):
    assert experiments_main(["wsd", "--scale", "tiny", "--seeds", "2", "--emit-slurm", "--no-calibrate",
                             "--out", str(tmp_path)]) == 0
    waves = sorted((tmp_path / "slurm").glob("wave*.txt"))
    assert [w.name for w in waves] == ["wave0.txt", "wave1.txt"]
    # wave 0: each seed's main run and its 2 planned runs; wave 1: its 2 cooldowns and 2 WSM cooldowns
    assert len(waves[0].read_text().splitlines()) == 6 and len(waves[1].read_text().splitlines()) == 8
    assert all("checkpoint.branch_from=" in line for line in waves[1].read_text().splitlines())
    mains = [line for line in waves[0].read_text().splitlines() if "schedule.name=constant" in line]
    assert len(mains) == 2 and all("checkpoint.permanent=[" in line for line in mains)
    script = (tmp_path / "slurm" / "wave1.sbatch").read_text()
    assert "#SBATCH --array=0-7" in script and "slurm_pretrain.sbatch" in script and "--requeue" in script
    submit = (tmp_path / "slurm" / "submit.sh").read_text()
    assert submit.count("sbatch --parsable") == 2 and "afterok" in submit
    res = subprocess.run(["bash", "-n", str(tmp_path / "slurm" / "wave0.sbatch")], capture_output=True)
    assert res.returncode == 0, res.stderr


def test_curves_csv_written_and_round_trips(tmp_path):
    """curves.csv: one row per logged record, branches from their branch step with their parent's key, rounded."""
    from experiments.runner import CURVE_COLUMNS, RunRecord, read_curves, write_curves
    from experiments.study import RunSpec

    main = RunSpec("main", ("train.seed=0",), {"role": "main"})
    branch = RunSpec("cool", ("train.seed=0",), {"role": "cooldown"}, parent="main", branch_step=20)
    records = []
    for spec, steps in ((main, range(10, 41, 10)), (branch, range(10, 51, 10))):
        run_dir = tmp_path / spec.label
        run_dir.mkdir()
        lines = [{"step": s, "loss": 5.0 - s / 100 + 1e-9, "lr": 0.016 * (1 - s / 100), "tokens": s * 64}
                 for s in steps]
        lines.append({"step": max(steps), "val_loss": 4.123456789})  # the evaluation after the last update
        lines.insert(1, {"step": 20, "loss": None, "nonfinite": {"loss": "nan"}, "lr": 0.01})  # a non-finite loss
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
        records.append(RunRecord(spec, f"key{spec.label}", run_dir))
    path = write_curves(tmp_path / "curves.csv", records, {"main": "keymain", "cool": "keycool"})
    text = path.read_text()
    assert text.splitlines()[0] == ",".join(CURVE_COLUMNS)
    curves = read_curves(path)
    assert set(curves) == {"keymain", "keycool"}
    m, c = curves["keymain"], curves["keycool"]
    assert m["parent"] == "" and m["step"] == [10, 20, 30, 40]
    assert c["parent"] == "keymain" and c["step"] == [30, 40, 50]  # after its branch step only
    assert m["loss"][0] == 4.9 and m["lr"][0] == pytest.approx(0.0144)  # 6 and 4 significant digits
    assert math.isnan(m["val_loss"][0]) and m["val_loss"][-1] == 4.12346 and c["val_loss"][-1] == 4.12346
    assert "4.123456789" not in text and "1e-09" not in text
    assert write_curves(tmp_path / "again.csv", records[::-1], {"main": "keymain", "cool": "keycool"}).read_text() == text
    twin = RunRecord(RunSpec("main-again", ("train.seed=0",), {"role": "main"}), "keymain", tmp_path / "main")
    assert write_curves(tmp_path / "twin.csv", [*records, twin], {"main": "keymain", "cool": "keycool"}).read_text() == text
    (tmp_path / "bad.csv").write_text("key,step\nx,1\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_curves(tmp_path / "bad.csv")


# ---------------------------------------------------------------- d2z: the grid brackets every optimum
def test_extend_grid_on_a_synthetic_bowl_stops_bracketed_or_capped():
    from experiments.d2z import BRACKETED, CAPPED, EXTEND, extend_grid

    def walk(k_min: float, ks=(-1, 0, 1), cap=(-4, 3), diverge_above=99):
        ks, steps = set(ks), 0
        while True:
            losses = {k: (math.nan if k > diverge_above else 3.0 + 0.01 * (k - k_min) ** 2) for k in ks}
            add, state, best = extend_grid(losses, cap)
            if not add:
                return sorted(ks), state, best, steps
            assert state == EXTEND and not set(add) & ks
            ks |= set(add)
            steps += 1

    assert walk(0.2) == ([-1, 0, 1], BRACKETED, 0, 0)  # bracketed at once: nothing added
    assert walk(3.4) == ([-1, 0, 1, 2, 3], CAPPED, 3, 2)  # climbs to the cap, then stops without a verdict
    assert walk(1.6) == ([-1, 0, 1, 2, 3], BRACKETED, 2, 2)
    assert walk(-2.8) == ([-4, -3, -2, -1, 0, 1], BRACKETED, -3, 3)
    assert walk(-2.8, cap=(-3, 3)) == ([-3, -2, -1, 0, 1], CAPPED, -3, 2)
    assert walk(-4.4)[1:3] == (CAPPED, -4)
    assert walk(3.0, diverge_above=1) == ([-1, 0, 1, 2], BRACKETED, 1, 1)  # a diverged neighbour is worse
    assert extend_grid({0: math.nan, 1: math.nan}, (-1, 3)) == ([-1], EXTEND, None)  # all diverged: go down
    assert extend_grid({-1: math.nan, 0: math.nan}, (-1, 3)) == ([], CAPPED, None)
    with pytest.raises(ValueError):
        extend_grid({}, (0, 1))


def _bowl_study(monkeypatch):
    import experiments.d2z as D

    scale = D.Scale(D.SCALES["cpu"].config, seeds=3, tpps=(2.0, 20.0), ks=(-1, 0, 1),
                    schedules=("Linear-D2Z", "Linear-10x", "Constant"), k_cap=(-3, 2))
    monkeypatch.setitem(D.SCALES, "bowl", scale)
    optimum = {(2.0, "Linear-D2Z"): (0.0, 4.33), (2.0, "Linear-10x"): (0.1, 4.30), (2.0, "Constant"): (0.0, 4.40),
               (20.0, "Linear-D2Z"): (1.3, 3.45), (20.0, "Linear-10x"): (0.2, 3.46), (20.0, "Constant"): (-2.6, 3.60)}

    def loss(p):
        k_min, base = optimum[(p["tpp"], p["schedule"])]
        return base + 0.01 * (p["k"] - k_min) ** 2 + 0.002 * p["seed"] + 0.0001 * p["seed"] ** 2 * (p["schedule"] == "Linear-D2Z")
    return D, loss


def test_d2z_grid_extends_until_bracketed_then_adds_seeds_and_reports_capped_arms(monkeypatch, tmp_path):
    """The dynamic d2z study on a synthetic bowl (no training: each run's experiment.json is written from the bowl)."""
    from experiments.runner import Runner

    D, loss = _bowl_study(monkeypatch)
    out = tmp_path / "d2z"
    labels_seen, rounds = set(), 0
    while True:
        study = build_study("d2z", "bowl", out=out)
        labels = {r.label for r in study.runs}
        assert labels_seen <= labels  # a rebuild only adds runs
        if labels == labels_seen:
            break
        labels_seen, rounds = labels, rounds + 1
        for r in study.runs:
            d = out / "runs" / study.key(r)
            if not (d / RESULT).is_file():
                d.mkdir(parents=True, exist_ok=True)
                (d / RESULT).write_text(json.dumps({"status": "done", "final_val_loss": loss(r.params), "label": r.label}))
    assert rounds == 3  # the initial grid; first extensions + seeds of the bracketed arms; Constant's and D2Z's second
    arms = {(a.tpp, a.schedule): a for a in D.grid_arms_of(D.SCALES["bowl"], out)}
    assert arms[(20.0, "Linear-D2Z")].state == "bracketed" and arms[(20.0, "Linear-D2Z")].ks == [-1, 0, 1, 2]
    assert arms[(20.0, "Linear-D2Z")].best_k == 1 and arms[(20.0, "Linear-10x")].best_k == 0
    assert arms[(20.0, "Constant")].state == "capped" and arms[(20.0, "Constant")].best_k == -3
    seeds_at = lambda tpp, name: sorted((r.params["seed"], r.params["k"]) for r in study.runs  # noqa: E731
                                        if r.params["tpp"] == tpp and r.params["schedule"] == name and r.params["seed"] > 0)
    assert seeds_at(20.0, "Linear-D2Z") == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]  # 2 seeds x 3 LRs
    assert seeds_at(20.0, "Constant") == []  # a capped arm gets no seeds
    assert study.projected == {}  # nothing left to price
    results = Runner(study, out, progress=False).results()
    assert (out / "curves.csv").is_file() and (out / "runs.csv").is_file()
    report = study.report(results, out)
    assert "per-seed observed minimum over the three LRs around the optimum" in report
    assert "paired t over 3 seeds" in report and "quadratic vertex" in report
    verdicts = report.split("### Verdicts")[1]
    assert "**REPRODUCED** D2Z beats 10x at 20 TPP" in verdicts
    assert "**REPRODUCED** 10x is no worse than D2Z at 2 TPP" in verdicts and "margin ±0.10%" in verdicts
    assert "**INCONCLUSIVE** D2Z beats Constant at 20 TPP" in verdicts and "Constant at 20 TPP is capped" in verdicts
    assert "Sanity row, Constant vs D2Z" in report and "+5.16%" in report
    # Delta from the named estimator: the per-seed observed minima at the bracket (k = 0, 1, 2 for D2Z, -1..1 10x)
    d = [((3.46 + 0.01 * 0.04 + 0.002 * s) - (3.45 + 0.01 * 0.09 + 0.002 * s + 0.0001 * s * s))
         / (3.46 + 0.01 * 0.04 + 0.002 * s) for s in range(3)]
    assert f"{np.mean(d):+.2%}" in report.split("### 20 TPP")[1]


# ---------------------------------------------------------------- wsd / wsm: tuned LRs, the duality merge
def test_wsm_windows_include_their_first_step_every_percent():
    from experiments.wsd import merge_window, uniform_steps

    w = merge_window(818, 0.4, 100)
    assert w[0] == 818 - 327 and w[-1] == 818 and all(b - a == 3 for a, b in zip(w, w[1:-1], strict=False))  # ~1% of 327
    assert len(merge_window(818, 0.05, 100)) == 42  # 41 updates: every step, first included
    assert uniform_steps(818, 0.2) == [695, 736, 777, 818]  # today's merge: the window's first step left out
    with pytest.raises(ValueError):
        merge_window(818, math.nan, 100)
    with pytest.raises(ValueError):
        merge_window(818, 0.0, 100)


def test_wsm_arm_merges_with_the_duality_weights():
    """decay:linear over k+1 checkpoints is uniform (a linear decay to 1/(k+1)); decay:1-sqrt follows the formula."""
    from experiments.wsd import merge_plan, merge_window

    window = merge_window(818, 0.1, 100)
    k1 = len(window)
    steps, c = merge_plan(818, window, "decay:linear", 0.1)
    assert steps == window and c == pytest.approx([1 / k1] * k1)
    implied = [sum(c[i:]) for i in range(k1)]  # w_i = sum_{j>=i} c_j: the LR multiplier the merge implies
    assert implied == pytest.approx([1 - i / k1 for i in range(k1)])  # linear decay to 1/(k+1)
    _, c = merge_plan(818, window, "decay:1-sqrt", 0.1)
    f = lambda x: 1 - math.sqrt(x)  # noqa: E731
    assert c == pytest.approx([f(j / k1) - (f((j + 1) / k1) if j + 1 < k1 else 0.0) for j in range(k1)])
    assert sum(c) == pytest.approx(1.0) and c[0] > c[-1]
    steps, c = merge_plan(818, window, "uniform-4", 0.1)
    assert len(steps) == 4 and c == pytest.approx([0.25] * 4)


def test_wsd_compute_saved_counts_one_cooldown_shape():
    from experiments.wsd import compute_saved

    branched, separate, saved = compute_saved({5.0: 256, 10.0: 512, 20.0: 1023}, 818)
    assert separate == 1791 and branched == 818 + 51 + 102 + 205
    assert f"{saved:.0%}" == "34%"  # not the 57% of counting both shapes' separate runs


def test_wsd_takes_each_arms_lr_from_the_d2z_optima(tmp_path):
    """The wsd study reads the d2z study's bracketed optima beside it; 10 TPP takes the grid LR between 5 and 20."""
    from experiments.wsd import SCALES, choose_lrs

    d2z_study = build_study("d2z", "cpu", out=tmp_path / "d2z-cpu")
    best_k = {("WSD", 20.0): 0, ("Linear-D2Z", 5.0): 0, ("Linear-D2Z", 20.0): 1, ("Linear-10x", 5.0): 0,
              ("Linear-10x", 20.0): 0}
    for r in d2z_study.runs:
        p = r.params
        k0 = best_k.get((p["schedule"], p["tpp"]), 0)
        d = tmp_path / "d2z-cpu" / "runs" / d2z_study.key(r)
        d.mkdir(parents=True)
        (d / RESULT).write_text(json.dumps({"status": "done", "final_val_loss": 3.5 + 0.01 * (p["k"] - k0) ** 2}))
    choice = choose_lrs(SCALES["cpu"], "cpu", tmp_path / "wsd-cpu")
    assert not choice.pending and choice.probes == [] and "d2z study" in choice.source
    assert choice.main == pytest.approx(0.016)
    assert choice.planned["Linear-D2Z"] == pytest.approx({5.0: 0.016, 10.0: 0.032, 20.0: 0.032})
    assert choice.planned["Linear-10x"] == pytest.approx({5.0: 0.016, 10.0: 0.016, 20.0: 0.016})
    # without d2z results: a bracket of its own (d2z's seed-0 grid at the top budget), the arms wait for it
    own = choose_lrs(SCALES["cpu"], "cpu", tmp_path / "elsewhere" / "wsd-cpu")
    assert own.pending and {r.params["schedule"] for r in own.probes} == {"WSD", "Linear-D2Z", "Linear-10x"}
    assert all(r.label.startswith("lr-probe/") and r.params["tpp"] == 20.0 for r in own.probes)
    study = build_study("wsd", "cpu", out=tmp_path / "elsewhere" / "wsd-cpu")
    assert study.dynamic and {r.params["role"] for r in study.runs} == {"lr-probe"}
    assert len(study.projected["expected"]) == 3 * 21  # the arms, priced by the dry run until the LRs are known


# ---------------------------------------------------------------- the pinned study corpus
def _fake_dist(root: Path, name: str, version: str, module: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nAbout {name}.\n")
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(f'"""The {module} package: a docstring to read."""\n')
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n"
                                 f"../../../bin/{module},,\n")


def test_pinned_corpus_selects_only_pinned_distributions_at_their_versions(tmp_path):
    from experiments.corpus import CorpusError, installed, main, read_pins, select, stage

    pins = read_pins(ROOT / "constraints.txt")
    assert pins["torch"] and pins["mosaicml-streaming"] and "mosaicml_streaming" not in pins  # PEP 503 names
    bad = tmp_path / "c.txt"
    bad.write_text("# comment\nfoo==1.0\nbar>=2\n")
    with pytest.raises(CorpusError, match=r"c.txt:3: 'bar>=2': expected NAME==VERSION"):
        read_pins(bad)
    bad.write_text("Foo==1.0\nfoo==1.1\n")
    with pytest.raises(CorpusError, match="c.txt:2: foo is pinned twice"):
        read_pins(bad)

    site = tmp_path / "site-packages"
    _fake_dist(site, "Alpha_Pkg", "1.0", "alpha")
    _fake_dist(site, "beta", "2.0", "beta")
    _fake_dist(site, "gamma", "3.0", "gamma")  # installed, not pinned: never in the corpus
    found = installed([site])
    assert set(found) == {"alpha-pkg", "beta", "gamma"} and found["alpha-pkg"].top_level[0] == "alpha"
    sel = select({"alpha-pkg": "1.0", "beta": "2.1", "delta": "4.0"}, found)
    assert [d.name for d in sel.selected] == ["alpha-pkg", "beta"] and not sel.ok
    assert sel.problems() == ["delta==4.0 is pinned but not installed", "beta is pinned at 2.1 but 2.0 is installed"]
    ok = select({"alpha-pkg": "1.0", "beta": "2.0"}, found)
    assert ok.ok
    staged = stage(ok, tmp_path / "data" / "pinned-site")
    assert sorted(p.name for p in staged.iterdir()) == ["Alpha_Pkg-1.0.dist-info", "alpha", "beta", "beta-2.0.dist-info"]
    assert all(p.is_symlink() for p in staged.iterdir())
    from data_prep.corpus import site_sources

    assert sorted(n for n, _ in site_sources([staged]).distributions) == ["alpha-pkg", "beta"]
    assert stage(ok, staged) == staged  # an earlier stage is replaced
    with pytest.raises(ValueError, match="site-packages"):
        stage(ok, site / "inside")  # never inside what it links to
    (tmp_path / "notastage").mkdir()
    (tmp_path / "notastage" / "file.txt").write_text("mine")
    with pytest.raises(ValueError):
        stage(ok, tmp_path / "notastage")
    assert (tmp_path / "notastage" / "file.txt").read_text() == "mine"

    pinned = tmp_path / "pins.txt"
    pinned.write_text("alpha-pkg==1.0\nbeta==2.1\n")
    out = tmp_path / "refused"
    assert main(["stage", "--constraints", str(pinned), "--out", str(out), "--site-packages", str(site)]) == 2
    assert not out.exists()  # refused work writes nothing
    assert main(["stage", "--constraints", str(pinned), "--out", str(out), "--site-packages", str(site),
                 "--allow-mismatch"]) == 0 and (out / "beta").is_symlink()


def test_corpus_fingerprint_and_the_reports_corpus_line(tiny_data, tmp_path, capsys):
    from experiments.corpus import corpus_line, fingerprint, main

    fp = fingerprint(tiny_data)
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert fp["train_tokens"] == manifest["splits"]["train"]["tokens"] and len(fp["sha256"]) == 64
    assert fingerprint(tiny_data) == fp
    committed = tmp_path / "corpus.json"
    assert main(["fingerprint", str(tiny_data), "--write", str(committed), "--pins", str(ROOT / "constraints.txt")]) == 0
    assert f"corpus sha256 {fp['sha256']}" in capsys.readouterr().out
    saved = json.loads(committed.read_text())
    assert saved["sha256"] == fp["sha256"] and saved["python"] and saved["pins"]["torch"]
    assert "The same corpus as the committed results'" in corpus_line(tiny_data, committed)
    committed.write_text(json.dumps({"sha256": "0" * 64, "train_tokens": 25_500_000}))
    line = corpus_line(tiny_data, committed)
    assert "differs from the committed results' corpus" in line and "25,500,000" in line
    assert f"{fp['train_tokens']:,} training" in line
    assert "no fingerprint" in corpus_line(tmp_path, committed)
    assert main(["fingerprint", str(tiny_data), "--write", str(tiny_data / "corpus.json")]) == 2  # never inside an input
