"""Bad input, the config and training side (#20): every float setting finite and in range, duplicate YAML
keys refused, --dry-run making the launch's start checks, a refused launch writing nothing, non-finite
weights never saved, metrics.jsonl strict JSON, CLI numbers in range.

Config checks call the loader or ``pretrain.py --dry-run`` in this process (no training); the launch tests
share one finished tiny run (module fixture) and one short run with faults armed."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from pretrain import faults
from pretrain.config_loader import ConfigError, yaml_load
from pretrain.model.config import GPTConfig
from pretrain.optim import OptimizerConfig
from pretrain.run_config import TrainConfig, load_run_config
from pretrain.rundir import read_metrics
from pretrain.training.callbacks import json_record
from tests.conftest import ROOT, run_pretrain, tiny_overrides

DEMO = ROOT / "configs" / "demo_cpu.yaml"


def config_error(*overrides: str, path: Path = DEMO) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, list(overrides))
    return str(info.value)


def dry_run(tiny_data, run_dir: Path, *extra: str, config: Path = DEMO):
    return run_pretrain(["--config", str(config), "--dry-run", *tiny_overrides(tiny_data, run_dir), *extra])


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def strict_json(line: str):
    def refuse(name):
        raise AssertionError(f"non-JSON token {name} in {line!r}")

    return json.loads(line, parse_constant=refuse)


# -- every float setting is finite and in range --------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=inf", "optimizer.lr"),
    ("optimizer.lr=.inf", "optimizer.lr"),
    ("model.init_std=inf", "model.init_std"),
    ("optimizer.grad_clip=nan", "optimizer.grad_clip"),
    ("optimizer.grad_clip=.nan", "optimizer.grad_clip"),
    ("optimizer.weight_decay=nan", "optimizer.weight_decay"),
    ("optimizer.betas=[0.9, .nan]", "optimizer.betas[1]"),
    ("train.spike_threshold=-inf", "train.spike_threshold"),
    ("schedule.warmup_fraction=nan", "schedule.warmup_fraction"),
    ("model.mup={sigma_base: .inf}", "model.mup.sigma_base"),
    ("checkpoint.interval_minutes=1e999", "checkpoint.interval_minutes"),
    ("data.download_timeout=inf", "data.download_timeout"),
])
def test_non_finite_float_settings_are_refused(override, key):
    msg = config_error(override)
    assert f"command line ({override}): {key} = " in msg and "not finite; expected a finite number" in msg, msg


def test_non_finite_optional_float_and_schedule_params_are_refused():
    msg = config_error("train.tokens_per_param=inf")
    assert "train.tokens_per_param = 'inf': expected a finite number or null" in msg
    msg = config_error("schedule.name=skiplr", "schedule.params={eta_before: .inf, eta_after: 0.1, k_s: 3}")
    assert "schedule.params.eta_before" in msg and "finite number" in msg


def test_range_checks_let_no_nan_or_inf_through_when_built_in_python():
    """validate() itself: a config built in Python (not through the loader) is checked the same way."""
    for name in ("lr", "grad_clip", "weight_decay", "eps"):
        for bad in (math.nan, math.inf):
            problems = OptimizerConfig(**{name: bad}).validate()
            assert [n for n, _ in problems] == [name], (name, bad, problems)
    assert OptimizerConfig(grad_clip=0.0).validate() == []  # 0 still turns clipping off
    for name in ("init_std", "norm_eps", "rope_base", "emb_mult", "logit_mult", "attn_scale", "z_loss", "dropout"):
        problems = GPTConfig(**{name: math.nan}).validate()
        assert name in [n for n, _ in problems], (name, problems)
    assert "init_std" in [n for n, _ in GPTConfig(init_std=math.inf).validate()]
    t = TrainConfig(micro_batch_size=1, max_steps=1, global_batch_size=1, spike_threshold=math.nan,
                    tokens_per_param=math.inf, peak_tflops=math.nan)
    assert {n for n, _ in t.validate()} == {"spike_threshold", "tokens_per_param", "peak_tflops"}


@pytest.mark.parametrize("seed, ok", [(-1, False), (0, True), (2**32 - 1, True), (2**32, False)])
def test_seed_in_the_range_numpy_takes(seed, ok):
    if ok:
        assert load_run_config(DEMO, [f"train.seed={seed}"]).train.seed == seed
    else:
        msg = config_error(f"train.seed={seed}")
        assert f"train.seed = {seed}: expected an integer in [0, 4294967295]" in msg


def test_dry_run_with_infinite_tokens_per_param_is_a_config_error(tiny_data, tmp_path):
    res = dry_run(tiny_data, tmp_path / "run", "train.max_steps=null", "train.tokens_per_param=inf")
    assert res.returncode == 2, res.stderr
    assert "train.tokens_per_param = 'inf': expected a finite number or null" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file(tiny_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    for run_dir in (blocker, blocker / "run"):
        res = dry_run(tiny_data, run_dir)
        assert res.returncode == 2, res.stderr
        assert f"run_dir = '{run_dir}': expected a directory to write the run into ({blocker}" in res.stderr
        assert "is a file" in res.stderr and "Traceback" not in res.stderr
    assert blocker.read_text() == "not a directory\n"


def test_run_dir_may_not_be_or_hold_an_input(tiny_data, tmp_path):
    res = dry_run(tiny_data, tmp_path / "run", f"run_dir={tiny_data}")
    assert res.returncode == 2, res.stderr
    assert f"run_dir {tiny_data} is the data directory (data.path) {tiny_data}" in res.stderr
    res = dry_run(tiny_data, tmp_path / "run", f"run_dir={tiny_data.parent}")
    assert res.returncode == 2 and f"run_dir {tiny_data.parent} contains the data directory" in res.stderr


def test_binary_config_file_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    res = run_pretrain(["--config", str(path), "--dry-run"])
    assert res.returncode == 2, res.stderr
    assert f"{path}: not a YAML text file (not UTF-8" in res.stderr and "Traceback" not in res.stderr
    res = run_pretrain(["--config", str(tmp_path), "--dry-run"])
    assert res.returncode == 2 and f"{tmp_path}: config file is a directory" in res.stderr


@pytest.mark.parametrize("content, expected", [
    (b'{"zero_optimization": {"stage": 2},}', "a valid JSON file ({path}: Expecting property name"),
    (b"\xff\xfe\x00binary", "a DeepSpeed JSON text file ({path} is not UTF-8 text"),
    (b'{"zero_optimization": {"stage": 2}, "gradient_clipping": NaN}', "a readable JSON file ({path}: NaN is not a number JSON allows"),
])
def test_bad_deepspeed_json_is_named(tiny_data, tmp_path, content, expected):
    path = tmp_path / "ds.json"
    path.write_bytes(content)
    res = dry_run(tiny_data, tmp_path / "run", f"deepspeed.config={path}")
    assert res.returncode == 2, res.stderr
    assert f"deepspeed.config = '{path}': expected " + expected.format(path=path) in res.stderr, res.stderr


# -- duplicate YAML keys -------------------------------------------------------------------------

def test_duplicate_yaml_key_names_the_key_and_both_lines(tmp_path):
    text = DEMO.read_text()
    assert "\noptimizer:\n" in text
    lines = text.splitlines()
    at = lines.index("optimizer:")
    dup = lines[: at + 1] + ["  lr: 0.1", "  lr: 0.2"] + lines[at + 1:]
    path = tmp_path / "dup.yaml"
    path.write_text("\n".join(dup) + "\n")
    msg = config_error(path=path)
    assert f"{path}: duplicate key 'optimizer.lr' at line {at + 3} (first at line {at + 2})" in msg
    # A duplicate section at the top level, and one inside a command-line value.
    path.write_text(text + "\ntrain:\n  max_steps: 3\n")
    assert "duplicate key 'train' at line" in config_error(path=path)
    msg = config_error("optimizer={lr: 0.1, lr: 0.2}")
    assert "command line: override 'optimizer={lr: 0.1, lr: 0.2}': duplicate key 'lr' at line 1" in msg
    # Merge keys still override what they merge in; the same key in two mappings is no duplicate.
    assert yaml_load("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\nc: {x: 3}\n") == {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3}}


def test_duplicate_key_in_a_dry_run(tiny_data, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(DEMO.read_text() + "\nname: again\n")
    res = dry_run(tiny_data, tmp_path / "run", config=path)
    assert res.returncode == 2 and f"{path}: duplicate key 'name' at line" in res.stderr, res.stderr


# -- CLI numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-2", "two"])
def test_stop_after_steps_must_be_a_count(tmp_path, value):
    res = run_pretrain(["--config", str(DEMO), "--dry-run", "--stop-after-steps", value])
    assert res.returncode == 2
    assert "argument --stop-after-steps: " in res.stderr and "expected an integer >= 0" in res.stderr


# -- metrics.jsonl -------------------------------------------------------------------------------

def test_json_record_writes_non_finite_values_as_null():
    record = {"step": 3, "loss": math.nan, "grad_norm": math.inf, "lr": 1e-3, "tag": "x"}
    out = json_record(record)
    assert out == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-3, "tag": "x",
                   "nonfinite": {"loss": "nan", "grad_norm": "inf"}}
    json.dumps(out, allow_nan=False)
    assert json_record({"step": 1, "loss": 2.0}) == {"step": 1, "loss": 2.0}


# -- launches ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    res = run_pretrain(["--config", str(DEMO), *tiny_overrides(tiny_data, run_dir, **{
        "train.max_steps": 2, "checkpoint.interval": 0, "eval.interval": 0, "eval.at_start": "false",
        "logging.tensorboard": "false"})])
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def relaunch(tiny_data, run_dir: Path, *extra: str):
    return ["--config", str(DEMO), *tiny_overrides(tiny_data, run_dir, **{
        "train.max_steps": 2, "checkpoint.interval": 0, "eval.interval": 0, "eval.at_start": "false",
        "logging.tensorboard": "false"}), *extra]


def test_refused_launch_leaves_the_run_directory_byte_identical(tiny_data, finished_run):
    before = hashes(finished_run)
    assert {"config.yaml", "hardware.json", "ds_config.json", "metrics.jsonl"} <= set(before)
    want = "the model differs from the one saved (model.n_layers: 2 -> 3)"
    # The dry run makes the launch's start checks: it refuses what the launch refuses, with the same code.
    res = run_pretrain([*relaunch(tiny_data, finished_run, "model.n_layers=3"), "--dry-run"])
    assert res.returncode == 3 and want in res.stderr, res.stderr[-3000:]
    assert hashes(finished_run) == before
    res = run_pretrain(relaunch(tiny_data, finished_run, "model.n_layers=3", "train.precision=fp32"))
    assert res.returncode == 3 and want in res.stderr, res.stderr[-3000:]
    assert hashes(finished_run) == before
    # What the dry run passes, it says where it starts from.
    res = run_pretrain([*relaunch(tiny_data, finished_run), "--dry-run"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resume from {finished_run / 'checkpoints' / 'step_00000002'} (step 2)" in res.stdout
    assert hashes(finished_run) == before


def test_dry_run_checks_the_branch_source(tiny_data, finished_run, tmp_path):
    src = finished_run / "checkpoints" / "step_00000002"
    res = run_pretrain([*relaunch(tiny_data, tmp_path / "branch", "train.max_steps=4", "model.d_model=128"),
                        "--branch-from", str(src), "--dry-run"])
    assert res.returncode == 3 and "model.d_model: 64 -> 128" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "branch").exists()
    res = run_pretrain([*relaunch(tiny_data, tmp_path / "branch", "train.max_steps=4"), "--branch-from", str(src),
                        "--dry-run"])
    assert res.returncode == 0 and f"branch from {src.resolve()} (step 2)" in res.stdout, res.stderr[-3000:]
    assert not (tmp_path / "branch").exists()


def test_non_finite_weights_are_never_saved(tiny_data, tmp_path):
    """Update 3's loss is NaN (skipped, logged as null); after update 4 a weight is NaN: the run stops with
    exit 4 before the save due at step 4, keeping step 2's checkpoint. metrics.jsonl stays strict JSON."""
    run_dir = tmp_path / "run"
    ov = tiny_overrides(tiny_data, run_dir, **{"checkpoint.interval": 2, "logging.interval": 100, "eval.interval": 0,
                                               "eval.at_start": "false", "logging.tensorboard": "false"})
    res = run_pretrain(["--config", str(DEMO), *ov], env=faults.arm({"train.nan_loss": [3], "train.nan_weight": [4]}))
    assert res.returncode == 4, res.stderr[-3000:]
    assert "step 4: the weights are not finite after the update" in res.stderr
    assert "the last good checkpoint is kept" in res.stderr
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_")) == ["step_00000002"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [strict_json(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2]["loss"] is None and records[2]["nonfinite"]["loss"] == "nan" and records[2]["skipped"] == 1
    assert read_metrics(run_dir)[2]["loss"] is None  # what readers (plot, report, forecast, experiments) skip
