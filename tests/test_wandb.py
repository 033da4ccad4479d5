"""``logging.wandb``: Weights & Biases, optional; checked in offline mode from the files wandb writes.

The offline run's ``run-<id>.wandb`` file is a LevelDB-style log of ``wandb_internal_pb2.Record``
protobufs (what ``wandb sync`` uploads): read here with a few lines, as the installed wandb has no
Python reader for it.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_pretrain, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """{"history": {step: {key: value}}, "config": {key: value}, "group", "name", "project", "tags"} of the
    W&B run a training run logged to (found through RUN_DIR/wandb.json)."""
    from wandb.proto import wandb_internal_pb2 as pb

    info = json.loads((run_dir / "wandb.json").read_text())
    (path,) = Path(info["dir"]).parent.glob("run-*.wandb")
    data, pos, buf = path.read_bytes(), 7, b""  # 7: the ":W&B" header
    out: dict[str, Any] = {"history": {}, "config": {}}

    def items(update) -> dict[str, Any]:
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}

    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a whole record, or the last fragment of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            which = rec.WhichOneof("record_type")
            if which == "run":
                out.update(group=rec.run.run_group, name=rec.run.display_name, project=rec.run.project,
                           tags=list(rec.run.tags))
                out["config"].update(items(rec.run.config.update))
            elif which == "config":
                out["config"].update(items(rec.config.update))
            elif which == "history":
                row = items(rec.history.item)
                out["history"][int(row["_step"])] = row
    return out


def test_metrics_config_and_branch_lineage_logged_offline(tiny_data, tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    (tmp_path / "wandb").mkdir()
    common = {"logging.wandb": "{project: test, mode: offline, tags: [tiny]}", "eval.interval": 2,
              "checkpoint.interval": 100, "optimizer.lr": 0.002}  # one checkpoint: the last step's
    parent = tmp_path / "parent"
    res = run_pretrain(["--config", DEMO, *tiny_overrides(tiny_data, parent, **{**common, "name": "parent",
                                                                              "train.max_steps": 4})], env)
    assert res.returncode == 0, res.stdout + res.stderr
    records = {r["step"]: r for r in map(json.loads, (parent / "metrics.jsonl").read_text().splitlines())}
    run = read_offline_run(parent)
    assert (run["project"], run["name"], run["group"], run["tags"]) == ("test", "parent", "parent", ["tiny"])
    assert run["config"]["optimizer"]["lr"] == 0.002 and run["config"]["name"] == "parent"
    assert sorted(run["history"]) == sorted(records) == [0, 1, 2, 3, 4]  # step 0: the initial val_loss
    for step, rec in records.items():
        logged = run["history"][step]
        for key, value in rec.items():
            assert logged[key] == pytest.approx(value), (step, key)
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(run["history"][4]) and "val_loss" in run["history"][2]

    # a branch: grouped with its parent, its lineage in the W&B config
    branch = tmp_path / "branch"
    res = run_pretrain(["--config", DEMO, *tiny_overrides(tiny_data, branch, **{
        **common, "name": "branch", "train.max_steps": 5, "eval.at_start": "false",
        "checkpoint.branch_from": str(parent / "checkpoints" / "step_00000004")})], env)
    assert res.returncode == 0, res.stdout + res.stderr
    run = read_offline_run(branch)
    assert (run["name"], run["group"]) == ("branch", "parent")
    lineage = json.loads((branch / "lineage.json").read_text())
    assert run["config"]["lineage"] == lineage and lineage["step"] == 4
    assert sorted(run["history"]) == [5] and "loss" in run["history"][5]


def test_wandb_missing_or_misconfigured_is_a_config_error(tmp_path, monkeypatch):
    from pretrain.config_loader import ConfigError
    from pretrain.run_config import load_and_resolve, load_run_config

    with pytest.raises(ConfigError) as e:
        load_run_config(DEMO, ["logging.wandb.project=a/b", "logging.wandb.tags=['', ok]", "logging.wandb.mode=cloud",
                               "logging.wandb.projet=x"])
    msg = str(e.value)
    assert "logging.wandb.mode = 'cloud': expected one of 'online', 'offline', 'disabled' or null" in msg
    assert "logging.wandb.projet = 'x': unknown key (did you mean 'project'?)" in msg
    with pytest.raises(ConfigError) as e:
        load_run_config(DEMO, ["logging.wandb.project=a/b", "logging.wandb.tags=['', ok]"])
    assert "logging.wandb.project = 'a/b': expected a W&B project name" in str(e.value)
    assert "logging.wandb.tags = ['', 'ok']: expected a list of tags of 1 to 64 characters" in str(e.value)
    assert load_run_config(DEMO).logging.wandb is None  # unset: off

    monkeypatch.setitem(sys.modules, "wandb", None)  # wandb cannot be imported
    with pytest.raises(ConfigError) as e:  # the checks `pretrain.py --dry-run` and every launch run first
        load_and_resolve(DEMO, [f"run_dir={tmp_path / 'run'}", "logging.wandb={project: test}"], world_size=1)
    assert ("command line (logging.wandb={project: test}): logging.wandb = {'project': 'test', 'entity': None,"
            in str(e.value))
    assert "expected the wandb package, which is not installed: pip install wandb" in str(e.value)


def test_wandb_init_failure_is_a_clear_launch_error(tmp_path, monkeypatch):
    import types

    import wandb

    from pretrain.trainer import LaunchError
    from pretrain.training.callbacks import WandbConfig, WandbLogger

    def no_login(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", no_login)
    run_cfg = types.SimpleNamespace(name="run", to_dict=dict)
    with pytest.raises(LaunchError, match=r"logging.wandb: wandb.init failed: RuntimeError: api_key not configured "
                                          r"\(no-tty\) \(online: run `wandb login`") as e:
        WandbLogger(WandbConfig(project="p")).start(run_cfg, tmp_path)
    assert e.value.code == 2
