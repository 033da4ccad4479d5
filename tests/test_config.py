"""Run-config loading and validation: every bad input stops the run with a message naming
the file, the key, the value and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pretrain.config_loader import ConfigError, Sources
from pretrain.run_config import RunConfig, load_run_config, resolve
from tests.conftest import ROOT, run_pretrain, tiny_overrides

DEMO = ROOT / "configs" / "demo_cpu.yaml"


def write_yaml(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def demo_dict() -> dict:
    return yaml.safe_load(DEMO.read_text())


def load_and_resolve(path: Path, overrides=(), world_size: int = 1):
    sources = Sources(str(path))
    cfg = load_run_config(path, list(overrides), sources)
    return resolve(cfg, world_size, sources)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path, tiny_data, tmp_path):
    cfg = load_run_config(path)
    assert isinstance(cfg, RunConfig)
    # ...and resolves against real (tiny) data with its own DeepSpeed JSON.
    resolved, ds = load_and_resolve(path, [f"data.path={tiny_data}", "data.seq_len=64"], world_size=2)
    assert ds["train_batch_size"] == resolved.train.global_batch_size
    assert resolved.model.vocab_size >= 512


def test_demo_resolves_and_fills_derived_values(tiny_data, tmp_path):
    cfg, ds = load_and_resolve(DEMO, tiny_overrides(tiny_data, tmp_path / "run"), world_size=2)
    assert cfg.data.seq_len == 64  # from the shards
    assert cfg.model.vocab_size == 512  # from the tokenizer
    assert cfg.train.grad_accum == 2  # 8 / (2 x 2)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 2
    from pretrain.hardware import choose_precision, detect
    from pretrain.run_config import ds_precision

    assert ds_precision(ds) == choose_precision("auto", detect()).precision  # precision: auto, for this machine
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["gradient_clipping"] == cfg.optimizer.grad_clip


def test_dotted_overrides_are_typed(tiny_data, tmp_path):
    cfg = load_run_config(DEMO, ["optimizer.lr=3e-4", "train.max_steps=7", "optimizer.betas=[0.8, 0.9]"])
    assert cfg.optimizer.lr == pytest.approx(3e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.train.max_steps == 7
    assert cfg.optimizer.betas == [0.8, 0.9]


def test_unknown_key_names_file_and_key(tmp_path):
    data = demo_dict()
    data["optimizer"]["learning_rate"] = 0.1
    path = write_yaml(tmp_path, data)
    msg = error_of(load_run_config, path)
    assert f"{path}: optimizer.learning_rate = 0.1: unknown key; expected one of the known keys: name, lr," in msg


def test_unknown_top_level_section(tmp_path):
    data = demo_dict()
    data["trainer"] = {"max_steps": 3}
    msg = error_of(load_run_config, write_yaml(tmp_path, data))
    assert "trainer = {'max_steps': 3}: unknown key (did you mean 'train'?)" in msg


def test_wrong_type_names_value_and_expected(tmp_path):
    data = demo_dict()
    data["train"]["max_steps"] = "ten"
    path = write_yaml(tmp_path, data)
    msg = error_of(load_run_config, path)
    assert f"{path}: train.max_steps = 'ten': expected an integer" in msg


def test_bool_is_not_an_int(tmp_path):
    data = demo_dict()
    data["train"]["micro_batch_size"] = True
    msg = error_of(load_run_config, write_yaml(tmp_path, data))
    assert "train.micro_batch_size = True: expected an integer" in msg


def test_micro_batch_zero(tmp_path):
    data = demo_dict()
    data["train"]["micro_batch_size"] = 0
    path = write_yaml(tmp_path, data)
    msg = error_of(load_run_config, path)
    assert f"{path}: train.micro_batch_size = 0: expected an integer >= 1" in msg


def test_literal_choice(tmp_path):
    msg = error_of(load_run_config, DEMO, ["train.precision=fp8"])
    assert "command line (train.precision=fp8): train.precision = 'fp8': expected one of 'auto', 'bf16', 'fp16', 'fp32'" in msg


def test_model_validation_names_field(tmp_path):
    msg = error_of(load_run_config, DEMO, ["model.n_heads=7"])
    assert "model.n_heads = 7" in msg and "divisor of d_model" in msg


def test_unknown_preset(tmp_path):
    msg = error_of(load_run_config, DEMO, ["model.preset=huge"])
    assert "model.preset = 'huge'" in msg and "tiny" in msg


def test_several_problems_reported_together(tmp_path):
    msg = error_of(load_run_config, DEMO, ["train.micro_batch_size=0", "optimizer.lr=-1", "eval.max_samples=0"])
    assert "train.micro_batch_size" in msg and "optimizer.lr" in msg and "eval.max_samples" in msg


def test_seq_len_longer_than_shards(tiny_data, tmp_path):
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + ["data.seq_len=65"])
    assert "data.seq_len = 65: expected at most the shards' seq_len 64" in msg
    assert str(tiny_data / "manifest.json") in msg


def test_missing_data_directory(tmp_path, tiny_data):
    missing = tmp_path / "nope"
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + [f"data.path={missing}"])
    assert f"data.path = '{missing}'" in msg and "not found" in msg


def test_data_directory_without_manifest(tmp_path, tiny_data):
    (tmp_path / "empty").mkdir()
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + [f"data.path={tmp_path / 'empty'}"])
    assert "manifest.json" in msg and "data_prep tokenize" in msg


def test_missing_tokenizer_file(tmp_path, tiny_data):
    missing = tmp_path / "gone.model"
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + [f"data.tokenizer={missing}"])
    assert f"data.tokenizer = '{missing}'" in msg and "sentencepiece model" in msg


def test_vocab_smaller_than_tokenizer(tmp_path, tiny_data):
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + ["model.vocab_size=100"])
    assert "model.vocab_size = 100: expected at least the tokenizer's vocabulary size 512" in msg


def test_batch_arithmetic_contradiction(tmp_path, tiny_data):
    ov = tiny_overrides(tiny_data, tmp_path) + ["train.grad_accum=3"]
    msg = error_of(load_and_resolve, DEMO, ov, world_size=2)
    assert "train.global_batch_size = 8" in msg and "(2) x train.grad_accum (3) x world size (2) = 12" in msg


def test_global_batch_not_divisible_by_world(tmp_path, tiny_data):
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path), world_size=3)
    assert "train.global_batch_size = 8: expected a multiple of" in msg and "world size (3) = 6" in msg


def test_deepspeed_json_contradiction_names_both(tmp_path, tiny_data):
    ds = json.loads((ROOT / "ds_configs" / "zero2.json").read_text())
    ds["train_batch_size"] = 999
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(ds))
    ov = tiny_overrides(tiny_data, tmp_path) + [f"deepspeed.config={ds_path}"]
    msg = error_of(load_and_resolve, DEMO, ov, world_size=2)
    assert "train.global_batch_size = 8" in msg and "train_batch_size = 999" in msg and str(ds_path) in msg


def test_deepspeed_json_precision_and_owned_blocks(tmp_path, tiny_data):
    ds = {"bf16": {"enabled": True}, "scheduler": {"type": "WarmupLR"}, "zero_optimization": {"stage": 2}}
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(ds))
    ov = tiny_overrides(tiny_data, tmp_path) + [f"deepspeed.config={ds_path}", "train.precision=fp32"]
    msg = error_of(load_and_resolve, DEMO, ov)
    assert "'scheduler' must not be set" in msg
    assert f"train.precision = 'fp32': expected the same precision as {ds_path}, which sets bf16.enabled = true" in msg


def test_missing_deepspeed_json(tmp_path, tiny_data):
    ov = tiny_overrides(tiny_data, tmp_path) + [f"deepspeed.config={tmp_path / 'x.json'}"]
    msg = error_of(load_and_resolve, DEMO, ov)
    assert "deepspeed.config" in msg and "not found" in msg


def test_warmup_longer_than_run(tmp_path, tiny_data):
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + ["schedule.warmup_steps=100"])
    assert "schedule.warmup_steps = 100: expected at most train.max_steps = 6 warmup updates (100)" in msg


def test_bad_override_syntax():
    msg = error_of(load_run_config, DEMO, ["optimizer.lr"])
    assert "expected KEY=VALUE" in msg


def test_missing_config_file(tmp_path):
    msg = error_of(load_run_config, tmp_path / "none.yaml")
    assert "none.yaml: config file not found" in msg


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    msg = error_of(load_run_config, path)
    assert str(path) in msg and "not valid YAML" in msg


def test_cli_reports_config_error_before_any_work(tmp_path, tiny_data):
    """pretrain.py exits with code 2 and one clear message; nothing is written."""
    run_dir = tmp_path / "run"
    res = run_pretrain(["--config", str(DEMO), *tiny_overrides(tiny_data, run_dir),
                   "train.micro_batch_size=0"])
    assert res.returncode == 2, res.stderr
    assert "train.micro_batch_size = 0: expected an integer >= 1" in res.stderr
    assert "command line (train.micro_batch_size=0)" in res.stderr
    assert not run_dir.exists()


def test_cli_dry_run_prints_plan(tmp_path, tiny_data):
    res = run_pretrain(["--config", str(DEMO), "--dry-run",
                   *tiny_overrides(tiny_data, tmp_path / "run")])
    assert res.returncode == 0, res.stderr
    assert "plan:" in res.stdout and "6 steps x 8 seqs x 64 tokens = 3,072 tokens" in res.stdout


def test_mix_must_sum_to_one():
    msg = error_of(load_run_config, DEMO, ["data.mix={a: 0.5, b: 0.4}"])
    assert "data.mix = {'a': 0.5, 'b': 0.4}: expected proportions >= 0 that sum to 1 (they sum to 0.9)" in msg


def test_mix_needs_per_source_data(tmp_path, tiny_data):
    msg = error_of(load_and_resolve, DEMO, tiny_overrides(tiny_data, tmp_path) + ["data.mix={a: 1.0}"])
    assert "data.mix = {'a': 1.0}" in msg and "--per-source" in msg


def test_token_budgets_resolve_to_steps(tiny_data, tmp_path):
    base = tiny_overrides(tiny_data, tmp_path) + ["train.max_steps=null"]
    cfg, _ = load_and_resolve(DEMO, base + ["train.max_tokens=5000"], world_size=2)
    assert cfg.train.max_steps == 10 and cfg.train.global_batch_tokens == 512  # ceil(5000 / (8 x 64))
    cfg, ds = load_and_resolve(DEMO, base + ["train.tokens_per_param=0.5", "train.global_batch_size=null",
                                             "train.global_batch_tokens=1024"], world_size=2)
    n = cfg.model.num_params()
    assert cfg.train.global_batch_size == 16 and cfg.train.max_steps == -(-int(0.5 * n) // 1024)
    assert ds["train_batch_size"] == 16
    # the resolved config loads again (its budgets agree)
    import yaml

    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again, _ = load_and_resolve(path, world_size=2)
    assert again.train.max_steps == cfg.train.max_steps


def test_budget_errors(tiny_data, tmp_path):
    base = tiny_overrides(tiny_data, tmp_path)
    msg = error_of(load_and_resolve, DEMO, base + ["train.max_tokens=99999"], world_size=2)
    assert "train.max_steps = 6: expected one budget, or budgets that agree (train.max_steps -> 6 updates, train.max_tokens -> 196 updates)" in msg
    msg = error_of(load_and_resolve, DEMO, base + ["train.global_batch_size=null", "train.global_batch_tokens=1000"], world_size=2)
    assert "train.global_batch_tokens = 1000: expected a multiple of data.seq_len = 64" in msg
    msg = error_of(load_run_config, DEMO, ["train.max_steps=null"])
    assert "train.max_steps = None: expected a budget: max_steps, max_tokens or tokens_per_param" in msg
