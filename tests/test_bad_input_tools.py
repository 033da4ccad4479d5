"""Bad input to the tools (issue 20): merge, export, evaluate, report, forecast, experiments and lm_eval refuse
what would destroy data or print a meaningless number, naming the flag, value or file, and write nothing.

Everything starts from one finished tiny run (in this process, a world of one; checkpoints at steps 2, 4
and 6) and calls the commands' mains in this process (``tests/inprocess.call_main``). A refusal is checked
by its exit code, its message and a hash of every file of the run (and data) before and after.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_data_prep, run_pretrain, tiny_overrides
from tests.inprocess import call_main

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")


def tree(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``path`` (directories as 'dir'): the whole tree's state."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 6-step run of the tiny model with complete checkpoints at steps 2, 4 and 6."""
    run_dir = tmp_path_factory.mktemp("bad_input_tools") / "run"
    res = run_pretrain(["--config", DEMO, *tiny_overrides(tiny_data, run_dir, **{
        "train.max_steps": 6, "checkpoint.interval": 2, "checkpoint.keep_last": 3, "eval.max_samples": 8,
        "logging.tensorboard": False})])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    assert tags == ["step_00000002", "step_00000004", "step_00000006"]
    return run_dir


@pytest.fixture(scope="module")
def other_tokenizer(tiny_data, tmp_path_factory) -> Path:
    """A 600-piece sentencepiece model trained on the same corpus (the run's has 512)."""
    out = tmp_path_factory.mktemp("other_tok") / "tok600.model"
    res = run_data_prep(["train-tokenizer", "--input", str(tiny_data.parent / "raw"), "--output", str(out),
                         "--vocab-size", "600"])
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def other_tokens(tiny_data, tmp_path_factory) -> Path:
    """The same corpus tokenized with another 512-piece tokenizer (trained on a sample of the run's sentences)."""
    root = tmp_path_factory.mktemp("other_tokens")
    raw = str(tiny_data.parent / "raw")
    for args in (["train-tokenizer", "--input", raw, "--output", str(root / "other512.model"), "--vocab-size", "512",
                  "--max-sentences", "300", "-q"],
                 ["tokenize", "--input", raw, "--output", str(root / "tokens"), "--tokenizer", str(root / "other512.model"),
                  "--seq-len", "64", "--val-fraction", "0.05", "-q"]):
        res = run_data_prep(args)
        assert res.returncode == 0, res.stderr
    return root / "tokens"


def merge_main(args):
    from pretrain.merge import main

    return call_main(main, args)


def export_main(args):
    from pretrain.export import main

    return call_main(main, args)


def evaluate_main(args):
    from pretrain.evaluate import main

    return call_main(main, args)


def ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


# -- merge --------------------------------------------------------------------------------------------


def test_merge_never_writes_into_the_runs_checkpoints(finished_run, tmp_path):
    before = tree(finished_run)
    run = str(finished_run)
    for out, relation in ((finished_run / "checkpoints", "is the run's checkpoint directory"),
                          (finished_run, "contains the run's checkpoint directory"),
                          (ckpt(finished_run, 6), "lies inside the run's checkpoint directory"),
                          (ckpt(finished_run, 2) / "merged", "lies inside the run's checkpoint directory")):
        for extra in ([], ["--overwrite"]):
            code, _, err = merge_main([run, "--last", "2", "--out", str(out), *extra])
            assert code == 2, err
            assert f"--out {out} {relation} {finished_run / 'checkpoints'}" in err, err
    assert tree(finished_run) == before  # the trained step_6 (weights and every optimizer state) untouched


def test_merge_refuses_duplicate_steps_and_bad_counts(finished_run, tmp_path):
    before = tree(finished_run)
    out = tmp_path / "m"
    code, _, err = merge_main([str(finished_run), "--steps", "4", "4", "--out", str(out)])
    assert code == 2 and "--steps 4 4: step 4 is given more than once" in err, err
    code, _, err = merge_main([str(finished_run), "--steps", "2", "6", "2", "--out", str(out)])
    assert code == 2 and "step 2 is given more than once" in err, err
    for bad, why in (("0", "0 is out of range"), ("-1", "-1 is out of range"), ("x", "'x' is not an integer")):
        code, _, err = merge_main([str(finished_run), "--last", bad, "--out", str(out)])
        assert code == 2 and f"argument --last: {why}: expected an integer >= 1" in err, err
    code, _, err = merge_main([str(finished_run), "--last", "4", "--out", str(out)])
    assert code == 3 and "--last 4: expected 1 to 3" in err, err
    code, _, err = merge_main([str(finished_run), "--steps", "-2", "--out", str(out)])
    assert code == 2 and "argument --steps: -2 is out of range: expected an integer >= 0" in err, err
    assert not out.exists() and tree(finished_run) == before


def test_merge_replaces_only_its_own_output_with_overwrite(finished_run, tmp_path):
    from pretrain.checkpoint import CheckpointDir

    out = tmp_path / "merged"
    code, stdout, err = merge_main([str(finished_run), "--last", "2", "--out", str(out)])
    assert code == 0, err
    first = tree(out)
    assert CheckpointDir(out).marker("step_00000006")["merged"]["weights"] == [0.5, 0.5]

    # again into the same output: refused without --overwrite, the earlier merge untouched
    code, _, err = merge_main([str(finished_run), "--last", "3", "--out", str(out)])
    assert code == 2 and f"--out {out / 'step_00000006'} already exists (pass --overwrite" in err, err
    assert tree(out) == first
    # with --overwrite: replaced (atomically: nothing left beside it)
    code, _, err = merge_main([str(finished_run), "--last", "3", "--out", str(out), "--overwrite"])
    assert code == 0, err
    assert CheckpointDir(out).marker("step_00000006")["merged"]["weights"] == pytest.approx([1 / 3] * 3)
    assert CheckpointDir(out).verify("step_00000006") == []
    assert sorted(p.name for p in out.iterdir()) == ["latest", "step_00000006"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # a merge of another step goes beside it
    assert merge_main([str(finished_run), "--steps", "2", "4", "--out", str(out)])[0] == 0
    assert CheckpointDir(out).complete_tags() == ["step_00000004", "step_00000006"]

    # a directory that is not a merge output is refused by name, even with --overwrite
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = merge_main([str(finished_run), "--last", "2", "--out", str(other), "--overwrite"])
    assert code == 2 and f"--out {other} is an existing directory that does not look like a merge output" in err, err
    assert (other / "keep.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["keep.txt"]


# -- export -------------------------------------------------------------------------------------------


def test_export_never_writes_over_the_run(finished_run, tmp_path):
    before = tree(finished_run)
    for out, relation in ((finished_run, "is the run directory"),
                          (finished_run / "checkpoints", "lies inside the run directory"),
                          (finished_run.parent, "contains the run directory"),
                          (finished_run / "hf", "lies inside the run directory")):
        code, _, err = export_main(["--run-dir", str(finished_run), "--out", str(out), "--overwrite"])
        assert code == 2 and f"--out {out} {relation} {finished_run}" in err, err
    tok = yaml.safe_load((finished_run / "config.yaml").read_text())["data"]["path"]
    code, _, err = export_main(["--run-dir", str(finished_run), "--out", tok, "--overwrite"])
    assert code == 2 and f"--out {tok} is the run's data directory" in err, err
    assert tree(finished_run) == before


def test_export_replaces_only_an_earlier_export(finished_run, tmp_path):
    out = tmp_path / "hf"
    args = ["--run-dir", str(finished_run), "--out", str(out)]
    assert export_main(args)[0] == 0
    first = tree(out)
    assert {"config.json", "model.safetensors"} <= set(first)
    code, _, err = export_main([*args, "--tag", "step_00000002"])
    assert code == 2 and f"--out {out} already exists (pass --overwrite" in err, err
    assert tree(out) == first
    assert export_main([*args, "--tag", "step_00000002", "--overwrite"])[0] == 0
    assert tree(out)["model.safetensors"] != first["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    code, _, err = export_main(["--run-dir", str(finished_run), "--out", str(notes), "--overwrite"])
    assert code == 2 and f"--out {notes} is an existing directory that does not look like this command's output" in err
    assert sorted(p.name for p in notes.iterdir()) == ["keep.txt"]


def test_export_refuses_non_finite_weights(finished_run, tmp_path):
    """A checkpoint whose weights hold NaN (a diverged run) is refused, naming the tensors; nothing written."""
    import torch
    from safetensors.torch import load_file, save_file

    from pretrain.checkpoint import CheckpointDir, commit

    merged = tmp_path / "merged"
    assert merge_main([str(finished_run), "--steps", "6", "--out", str(merged)])[0] == 0
    step = merged / "step_00000006"
    sd = load_file(str(step / "model.safetensors"))
    sd["norm.weight"] = torch.full_like(sd["norm.weight"], float("nan"))
    sd["blocks.0.attn.wq.weight"][0, 0] = float("inf")
    save_file(sd, str(step / "model.safetensors"))
    marker = json.loads((step / "COMPLETE").read_text())
    marker.pop("manifest_sha256")
    commit(step, marker)  # sealed again: a sound-looking checkpoint of diverged weights
    assert CheckpointDir(merged).verify("step_00000006") == []
    out = tmp_path / "hf"
    code, _, err = export_main(["--run-dir", str(finished_run), "--checkpoint-dir", str(merged), "--out", str(out)])
    assert code == 2, err
    assert "non-finite values (NaN or infinity) in 2 of" in err and "blocks.0.attn.wq.weight" in err \
        and "norm.weight" in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_tokenizer_that_does_not_fit_the_model(finished_run, other_tokenizer, other_tokens,
                                                                   tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    cfg["data"]["tokenizer"] = str(other_tokenizer)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "hf"
    code, _, err = export_main(["--run-dir", str(run), "--checkpoint-dir", str(finished_run / "checkpoints"),
                                "--out", str(out)])
    assert code == 2, err
    assert f"tokenizer {other_tokenizer} has 600 pieces but the model" in err and "model.vocab_size = 512" in err, err
    assert "the run's data was tokenized with 512" in err and "manifest.json" in err, err
    assert not out.exists()

    # another tokenizer of the model's size: not the file the run's data was tokenized with
    other = other_tokens.parent / "other512.model"
    cfg["data"]["tokenizer"] = str(other)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = export_main(["--run-dir", str(run), "--checkpoint-dir", str(finished_run / "checkpoints"),
                                "--out", str(out)])
    assert code == 2 and f"tokenizer {other} is not the file the run's data was tokenized with" in err, err
    assert not out.exists()


# -- evaluate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value", [("--batch-size", "-1"), ("--batch-size", "0"), ("--max-samples", "-5"),
                                        ("--max-samples", "0"), ("--max-samples", "nan")])
def test_evaluate_refuses_bad_numbers(finished_run, flag, value):
    code, out, err = evaluate_main([str(ckpt(finished_run, 6)), flag, value])
    assert code == 2 and f"argument {flag}: {value if value != 'nan' else repr(value)}" in err, err
    assert ("expected an integer >= 1" in err) and "validation loss" not in out


def test_evaluate_refuses_data_of_another_tokenizer(finished_run, other_tokens, tmp_path):
    """Data tokenized with another tokenizer (same vocabulary size, another file) is refused, unless allowed."""
    before = tree(finished_run)
    code, out, err = evaluate_main([str(ckpt(finished_run, 6)), "--data", str(other_tokens), "--max-samples", "4"])
    assert code == 2 and "validation loss" not in out, out
    assert f"--data {other_tokens}: {other_tokens / 'manifest.json'} names tokenizer sha256" in err, err
    assert "another tokenizer" in err and "--allow-other-tokenizer" in err, err
    code, out, err = evaluate_main([str(ckpt(finished_run, 6)), "--data", str(other_tokens), "--max-samples", "4",
                                    "--allow-other-tokenizer", "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["samples"] == 4 and result["data"] == str(other_tokens)
    assert tree(finished_run) == before


# -- report -------------------------------------------------------------------------------------------


def report_main(args):
    from pretrain.report import main

    return call_main(main, args, catch_errors=True)


def test_evaluations_in_a_row_leak_nothing(finished_run):
    """In-process evaluations (a study evaluates every WSM merge in its own process) release their datasets'
    shared memory: the wsd study died with EMFILE ('Too many open files') after a few dozen merges."""
    from pretrain.evaluate import evaluate

    def counts() -> tuple[int, int]:
        return len(os.listdir("/proc/self/fd")), len(os.listdir("/dev/shm"))

    seen = []
    for _ in range(4):
        out = evaluate(str(finished_run / "checkpoints" / "step_00000006"), max_samples=4)
        assert math.isfinite(out["val_loss"])
        seen.append(counts())
    assert seen[3] == seen[1], f"(file descriptors, /dev/shm entries) after evaluations 2..4: {seen[1:]}"


def test_report_says_what_a_directory_is(finished_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = report_main([str(empty)])
    assert code == 2 and "Traceback" not in err and f"{empty} is not a run directory" in err, err
    code, _, err = report_main([str(tmp_path / "nowhere")])
    assert code == 2 and "no such directory" in err, err

    half = tmp_path / "half"  # the trainer wrote its config, then died
    half.mkdir()
    shutil.copy(finished_run / "config.yaml", half / "config.yaml")
    code, _, err = report_main([str(half)])
    assert code == 2 and "Traceback" not in err and "no metrics.jsonl: the run never trained" in err, err
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    (half / "metrics.jsonl").write_text(lines[0] + "\n" + '{"step": 1, "lo')  # the step-0 validation, a torn line
    code, _, err = report_main([str(half)])
    assert code == 2 and "Traceback" not in err and "holds no training record" in err, err
    assert sorted(p.name for p in half.iterdir()) == ["config.yaml", "metrics.jsonl"]  # refused: nothing written

    # in progress: 3 of 6 updates, no checkpoint yet: a partial report that says so
    (half / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    code, out, err = report_main([str(half)])
    assert code == 0 and "Traceback" not in err, err
    assert out.startswith(f"partial report of {half}:"), out
    assert "the run is incomplete: 3 of 6 updates" in out and "no complete checkpoint" in out, out

    code, out, err = report_main([str(finished_run)])
    assert code == 0 and "partial" not in out and "final validation loss" in out, out + err


# -- forecast -----------------------------------------------------------------------------------------


def forecast_main(args):
    from pretrain.forecast.__main__ import main

    return call_main(main, args, catch_errors=True)


def good_law(path: Path) -> Path:
    import numpy as np

    from pretrain.forecast import LAWS, FittedLaw

    unit = np.array([3.0, 30.0, 0.5, 0.5, 0.1, 0.6, 0.6])
    return FittedLaw("mpl", LAWS["mpl"].to_raw(unit, 3e-3), 3e-3, {},
                     sources=[{"peak_lr": 3e-3, "max_steps": 600}]).save(path)


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: "{not json", "not JSON"),
    (lambda d: {k: v for k, v in d.items() if k != "params"}, "params: expected a mapping"),
    (lambda d: {**d, "params": {**d["params"], "alpha": float("nan")}}, "params.alpha: expected a finite number"),
    (lambda d: {**d, "lr_ref": float("inf")}, "lr_ref: expected a finite LR > 0"),
    (lambda d: {**d, "diagnostics": [1]}, "diagnostics: expected a mapping"),
    (lambda d: {**d, "sources": [{"peak_lr": float("nan"), "max_steps": 600}]}, "sources[0].peak_lr"),
    (lambda d: {**d, "sources": ["x"]}, "sources[0].peak_lr"),
])
def test_forecast_refuses_a_bad_law_file_naming_it(tmp_path, mutate, fragment):
    law = good_law(tmp_path / "law.json")
    data = mutate(json.loads(law.read_text()))
    law.write_text(data if isinstance(data, str) else json.dumps(data))
    out = tmp_path / "f.png"
    code, _, err = forecast_main(["predict", str(law), "--config", DEMO, "--out", str(out)])
    assert code == 2 and "Traceback" not in err and f"{law}" in err and fragment in err, err
    assert not out.exists()


def test_forecast_outputs_follow_the_output_rule(finished_run, tmp_path):
    before = tree(finished_run)
    metrics = finished_run / "metrics.jsonl"
    code, _, err = forecast_main(["fit", str(finished_run), "--out", str(metrics)])
    assert code == 2 and f"--out {metrics} is the run {finished_run}'s metrics.jsonl" in err, err
    code, _, err = forecast_main(["fit", str(finished_run), "--out", str(tmp_path / "law.json"),
                                  "--plot", str(finished_run / "config.yaml")])
    assert code == 2 and "--plot" in err and "config.yaml" in err, err
    assert tree(finished_run) == before

    law = good_law(tmp_path / "law.json")
    law_bytes = law.read_bytes()
    code, _, err = forecast_main(["predict", str(law), "--config", DEMO, "--out", str(law)])
    assert code == 2 and f"--out {law} is the law file" in err, err
    code, _, err = forecast_main(["optimize", str(law), "--config", DEMO, "--out", DEMO])
    assert code == 2 and f"--out {DEMO} is the run config" in err, err
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = forecast_main(["predict", str(law), "--config", DEMO, "--out", str(notes), "--overwrite"])
    assert code == 2 and f"--out {notes} is an existing file that does not look like a PNG image" in err, err
    assert notes.read_text() == "mine" and law.read_bytes() == law_bytes

    png = tmp_path / "f.png"
    args = ["predict", str(law), "--config", DEMO, "train.max_steps=600", "--out", str(png)]
    assert forecast_main(args)[0] == 0 and png.stat().st_size > 0
    code, _, err = forecast_main(args)
    assert code == 2 and f"--out {png} already exists (pass --overwrite" in err, err
    assert forecast_main([*args, "--overwrite"])[0] == 0


@pytest.mark.parametrize("flag,value", [("--starts", "0"), ("--max-points", "5"), ("--skip-fraction", "nan"),
                                        ("--skip-fraction", "1"), ("--huber-delta", "0"), ("--huber-delta", "inf")])
def test_forecast_refuses_bad_numbers(finished_run, tmp_path, flag, value):
    out = tmp_path / "law.json"
    code, _, err = forecast_main(["fit", str(finished_run), "--out", str(out), flag, value])
    assert code == 2 and f"argument {flag}: {value} is out of range" in err, err
    assert not out.exists()


# -- experiments --------------------------------------------------------------------------------------


def experiments_main(args):
    from experiments.__main__ import main

    return call_main(main, args, catch_errors=True)


@pytest.mark.parametrize("flag,value,expected", [
    ("--seeds", "0", "an integer >= 1"), ("--seeds", "-3", "an integer >= 1"), ("--slots", "0", "an integer >= 1"),
    ("--gpus", "-1", "an integer >= 0"), ("--checkpoint-minutes", "nan", "a finite number >= 0"),
    ("--checkpoint-minutes", "-1", "a finite number >= 0")])
def test_experiments_refuses_bad_numbers(tmp_path, flag, value, expected):
    code, out, err = experiments_main(["skiplr", "--scale", "tiny", "--dry-run", "--no-calibrate", "--out",
                                       str(tmp_path / "s"), flag, value])
    assert code == 2 and f"argument {flag}: {value} is out of range: expected {expected}" in err, err
    assert "runs on" not in out and not (tmp_path / "s").exists()


def test_experiments_output_is_not_its_data(tiny_data, tmp_path):
    before = tree(tiny_data)
    for out, relation in ((tiny_data, "is"), (tiny_data / "study", "lies inside"), (tiny_data.parent, "contains")):
        code, _, err = experiments_main(["skiplr", "--scale", "tiny", "--dry-run", "--no-calibrate", "--out", str(out),
                                         "--set", f"data.path={tiny_data}"])
        assert code == 2 and f"--out {out} {relation} the data directory (data.path) {tiny_data}" in err, err
    assert tree(tiny_data) == before


# -- lm_eval ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value,expected", [
    ("--batch-size", "0", "is out of range: expected an integer >= 1"),
    ("--batch-size", "-4", "is out of range: expected an integer >= 1"),
    ("--limit", "nan", "is out of range: expected a count"), ("--limit", "inf", "is out of range: expected a count"),
    ("--limit", "-1", "is out of range: expected a count"), ("--limit", "2.5", "is out of range: expected a count"),
    ("--num-fewshot", "-1", "is out of range: expected an integer >= 0"),
    ("--max-length", "0", "is out of range: expected an integer >= 1")])
def test_lm_eval_refuses_bad_numbers(flag, value, expected):
    from pretrain.lm_eval import parse_args

    code, _, err = call_main(parse_args, ["ckpt", "--tasks", "t", flag, value])
    assert code == 2 and f"argument {flag}: {value} {expected}" in err, err


def test_evaluate_never_prints_a_loss_over_zero_samples(finished_run, tiny_data, tmp_path):
    """Data of the run's tokenizer whose validation split is empty (--val-fraction 0): refused, no loss printed."""
    no_val = tmp_path / "no_val"
    res = run_data_prep(["tokenize", "--input", str(tiny_data.parent / "raw"), "--output", str(no_val), "--tokenizer",
                         str(tiny_data.parent / "tok.model"), "--seq-len", "64", "--val-fraction", "0", "-q"])
    assert res.returncode == 0, res.stderr
    code, out, err = evaluate_main([str(ckpt(finished_run, 6)), "--data", str(no_val)])
    assert code == 2 and "validation loss" not in out, out
    # refused by the data checks (0 samples in its manifest), else by evaluate's own (its split has no sample)
    assert str(no_val) in err and ("0 samples" in err or "has no sample" in err), err
