"""Mid-flight changes: the config wins over a checkpoint, SkipLR by branching, cooldowns from any schedule,
new data at a branch, checkpoint merging, evaluation anywhere, unsafe checkpoints refused.

Single-rank runs go through ``pretrain.train()`` in this process (no launcher per run); the SkipLR
test runs 2 real ranks.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from pretrain import train
from pretrain.checkpoint import CheckpointDir, commit
from pretrain.evaluate import main as evaluate_main
from pretrain.main import parse_args
from pretrain.schedules import ScheduleConfig
from pretrain.trainer import LaunchError
from tests.conftest import ROOT, run_data_prep, tiny_overrides
from tests.test_checkpoint import launch, losses, ok

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
pytestmark = pytest.mark.distributed
CONSTANT = {"schedule.name": "constant", "schedule.warmup_steps": 0, "schedule.end_ratio": "null"}


def run(tiny_data, run_dir: Path, branch_from: Path | None = None, **overrides):
    """One in-process run of the tiny model; overrides as tiny_overrides takes them."""
    ov = tiny_overrides(tiny_data, run_dir, **overrides)
    if branch_from is not None:
        ov.append(f"checkpoint.branch_from={branch_from}")
    return train(DEMO, ov)


def last_json(capsys) -> dict:
    """The JSON line that ``python -m pretrain.evaluate --json``, called in this process, printed last."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


# -- 1. the config wins over the checkpoint ------------------------------------------------------

@pytest.mark.parametrize("stage", [1, 2, 3])
def test_branch_takes_lr_and_weight_decay_from_the_config_not_the_checkpoint(tiny_data, tmp_path, stage, capsys):
    # Token ids >= 512 never occur (the tokenizer has 512): their embedding rows get no gradient, so an
    # update changes them by weight decay alone: w <- w * (1 - lr * wd), with AdamW's moments at zero.
    base = {**CONSTANT, "deepspeed.config": f"ds_configs/zero{stage}.json", "train.precision": "fp32",
            "model.vocab_size": 640, "optimizer.embedding_weight_decay": "true", "train.max_steps": 3,
            "checkpoint.interval": 3, "eval.interval": 0, "eval.at_start": "false"}
    parent = tmp_path / "parent"
    assert run(tiny_data, parent, **base).code == 0
    branch = tmp_path / "branch"
    res = run(tiny_data, branch, ckpt(parent, 3), **{**base, "train.max_steps": 4, "checkpoint.interval": 1,
                                                      "optimizer.lr": 1.5e-3, "optimizer.weight_decay": 0.3})
    assert res.code == 0 and res.step == 4
    out = capsys.readouterr().out
    assert "the config's optimizer settings replace the checkpoint's" in out and "decay.base_lr: 0.003 -> 0.0015" in out
    (rec,) = records(branch)
    assert rec["step"] == 4 and rec["lr"] == 1.5e-3
    groups = [k for k in rec if k.startswith("lr/")]
    assert {"lr/decay", "lr/no_decay", "lr/embed"} <= set(groups)
    assert all(rec[g] == 1.5e-3 for g in groups)  # base 1.5e-3 x lr_mult 1 x multiplier 1
    applied = json.loads((branch / "lineage.json").read_text())["optimizer_applied_over_checkpoint"]
    assert "decay.weight_decay: 0.1 -> 0.3" in applied and "embed.weight_decay: 0.1 -> 0.3" in applied
    before = CheckpointDir(parent / "checkpoints").fp32_weights("step_00000003")["tok_emb.weight"][512:]
    after = CheckpointDir(branch / "checkpoints").fp32_weights("step_00000004")["tok_emb.weight"][512:]
    assert torch.allclose(after, before * (1 - 1.5e-3 * 0.3), rtol=1e-6, atol=0)  # the new decay, applied
    assert not torch.allclose(after, before * (1 - 3e-3 * 0.1), rtol=1e-6, atol=0)  # not the saved one


def test_resume_with_a_changed_optimizer_config_applies_and_records_it(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = {**CONSTANT, "train.max_steps": 4, "checkpoint.interval": 2, "eval.interval": 0}
    assert run(tiny_data, run_dir, **{**base, "train.max_steps": 2}).code == 0
    assert run(tiny_data, run_dir, **{**base, "optimizer.lr": 1e-3, "optimizer.betas": "[0.8,0.9]"}).code == 0
    assert "decay.base_lr: 0.003 -> 0.001" in capsys.readouterr().out
    assert [r["lr"] for r in records(run_dir) if r["step"] > 2] == [1e-3, 1e-3]
    (change,) = [json.loads(l) for l in (run_dir / "changes.jsonl").read_text().splitlines()]
    assert change["step"] == 2 and "decay.betas: (0.9, 0.95) -> (0.8, 0.9)" in change["optimizer_changes"]


# -- 2. SkipLR by branching is exact --------------------------------------------------------------

def test_skiplr_by_branching_is_bitwise_the_one_run_switch(tiny_data, tmp_path):
    """eta1 for k = 3 updates, then a branch at constant eta2 = eta1 / 2: the losses of one run whose
    skiplr schedule switches at update k + 1, bit for bit (2 ranks, dropout on)."""
    common = {"model.dropout": 0.1, "eval.interval": 0, "optimizer.lr": 2e-3, "train.max_steps": 6}
    one = tmp_path / "one"
    ok(launch(tiny_data, one, nproc=2, **{**common,
        "schedule.name": "skiplr", "schedule.warmup_steps": 0, "schedule.end_ratio": "null",
        "schedule.params": "{eta_before: 1.0, eta_after: 0.5, k_s: 4, absolute: false}"}))
    first = tmp_path / "eta1"
    ok(launch(tiny_data, first, nproc=2, **{**common, **CONSTANT, "train.max_steps": 3, "checkpoint.interval": 3}))
    second = tmp_path / "eta2"
    ok(launch(tiny_data, second, nproc=2, extra_args=["--branch-from", str(ckpt(first, 3))],
              **{**common, **CONSTANT, "optimizer.lr": 1e-3}))
    branched = {**losses(first), **losses(second)}
    assert sorted(branched) == list(range(1, 7))
    assert branched == losses(one)  # bitwise
    assert [r["lr"] for r in records(second)] == [r["lr"] for r in records(one) if r["step"] > 3] == [1e-3] * 3


# -- 3. a cooldown from any schedule --------------------------------------------------------------

def test_cooldown_branch_from_a_cosine_run_starts_at_its_lr(tiny_data, tmp_path):
    parent = tmp_path / "cosine"
    cos = {"schedule.name": "cosine", "schedule.warmup_steps": 1, "schedule.end_ratio": 0.1}
    assert run(tiny_data, parent, **cos, **{"train.max_steps": 8, "checkpoint.interval": 4, "eval.interval": 0}).code == 0
    branch = tmp_path / "cooldown"
    res = run(tiny_data, branch, ckpt(parent, 4), **{
        "schedule.name": "cooldown", "schedule.warmup_steps": 0, "schedule.end_ratio": "null",
        "schedule.params": "{decay_steps: 3, shape: linear, end_ratio: 0.0}", "train.max_steps": 7,
        "checkpoint.interval": 0, "eval.interval": 0})
    assert res.code == 0
    start_lr = 3e-3 * ScheduleConfig(name="cosine", warmup_steps=1, end_ratio=0.1).build(8)(3)
    assert records(parent)[4]["lr"] == pytest.approx(start_lr, rel=1e-12)  # the parent's LR at its update 4
    lrs = [r["lr"] for r in records(branch)]
    assert lrs == pytest.approx([start_lr * (1 - s / 3) for s in (1, 2, 3)], rel=1e-12, abs=1e-18)
    saved = json.loads((branch / "lineage.json").read_text())["config_diff"]
    assert saved["schedule.name"] == ["cosine", "cooldown"]
    assert saved["schedule.params.start_step"] == [None, 4]


# -- 4. data at a branch --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_data(tiny_data, tmp_path_factory) -> Path:
    """Another tokenized dataset (same tokenizer), far smaller than tiny_data: 10 short documents."""
    import argparse as mod_a
    import inspect
    import json as mod_j
    import textwrap

    root = tmp_path_factory.mktemp("small")
    text = inspect.getsource(mod_a) + inspect.getsource(mod_j)
    for i in range(10):
        (root / "raw").mkdir(exist_ok=True)
        (root / "raw" / f"doc{i}.txt").write_text(textwrap.dedent(text[i * 400:(i + 1) * 400]))
    res = run_data_prep(["tokenize", "--input", str(root / "raw"), "--output", str(root / "tokens"), "--tokenizer",
                         str(tiny_data.parent / "tok.model"), "--seq-len", "64", "--val-fraction", "0.3", "-q"])
    assert res.returncode == 0, res.stderr
    return root / "tokens"


def test_branch_onto_new_data_with_a_fresh_order(tiny_data, small_data, tmp_path, capsys):
    parent = tmp_path / "parent"
    assert run(tiny_data, parent, **{"train.max_steps": 8, "checkpoint.interval": 8, "eval.interval": 0}).code == 0
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] < 8 * 8  # smaller than the parent's data position
    bad = tmp_path / "bad"
    ov = tiny_overrides(small_data, bad, **{"train.max_steps": 10, "eval.interval": 0}) + [f"checkpoint.branch_from={ckpt(parent, 8)}"]
    with pytest.raises(LaunchError) as e:
        train(DEMO, ov)
    assert e.value.code == 3 and "does not fit the training data" in str(e.value) and "load_data_state=false" in str(e.value)
    assert not (bad / "metrics.jsonl").exists()  # refused before any step

    fresh = tmp_path / "fresh"
    res = run(small_data, fresh, ckpt(parent, 8), **{"train.max_steps": 10, "eval.interval": 0,
                                                      "checkpoint.load_data_state": "false"})
    assert res.code == 0 and [r["step"] for r in records(fresh)] == [9, 10]
    assert "the data order starts fresh" in capsys.readouterr().out
    lineage = json.loads((fresh / "lineage.json").read_text())
    assert lineage["data_state"] == "fresh"
    assert lineage["data_changed"]["data.path"] == [str(tiny_data), str(small_data)]


def test_nothing_to_train_is_said_not_a_crash(tiny_data, tmp_path, capsys):
    parent = tmp_path / "parent"
    assert run(tiny_data, parent, **{"train.max_steps": 2, "checkpoint.interval": 2, "eval.interval": 0}).code == 0
    res = run(tiny_data, tmp_path / "branch", ckpt(parent, 2), **{"train.max_steps": 2})
    assert res.code == 0 and res.step == 2
    assert "nothing to train: the run starts at step 2 and train.max_steps is 2" in capsys.readouterr().out


def test_options_and_overrides_mix_in_any_order():
    args = parse_args(["--config", "X.yaml", "a.b=1", "--branch-from", "ckpt", "c=2", "--dry-run"])
    assert (args.config, args.branch_from, args.dry_run, args.overrides) == ("X.yaml", "ckpt", True, ["a.b=1", "c=2"])
    with pytest.raises(SystemExit):
        parse_args(["--config", "X.yaml", "not-an-override"])


# -- 5. checkpoint merging ------------------------------------------------------------------------

def test_merge_evaluate_export_and_branch(tiny_data, tmp_path, capsys):
    from pretrain.merge import main as merge_main
    from pretrain.merge import merge_weights

    run_dir = tmp_path / "run"
    assert run(tiny_data, run_dir, **{**CONSTANT, "train.max_steps": 6, "checkpoint.interval": 2,
                                      "checkpoint.keep_last": 3, "eval.interval": 0, "train.precision": "fp32"}).code == 0
    ckpts = CheckpointDir(run_dir / "checkpoints")
    w = {t: ckpts.fp32_weights(t) for t in ckpts.complete_tags()}
    assert sorted(w) == ["step_00000002", "step_00000004", "step_00000006"]

    assert merge_main([str(run_dir), "--steps", "4", "--out", str(tmp_path / "one")]) == 0
    one = CheckpointDir(tmp_path / "one")
    assert one.complete_tags() == ["step_00000004"] and one.verify("step_00000004") == []
    assert all(torch.equal(v, w["step_00000004"][k]) for k, v in one.fp32_weights("step_00000004").items())

    assert merge_main([str(run_dir), "--last", "2", "--out", str(tmp_path / "two")]) == 0
    two = CheckpointDir(tmp_path / "two").fp32_weights("step_00000006")
    for k, v in two.items():
        assert torch.allclose(v, (w["step_00000004"][k] + w["step_00000006"][k]) / 2, rtol=0, atol=1e-7)
    marker = CheckpointDir(tmp_path / "two").marker("step_00000006")
    assert marker["merged"]["weights"] == [0.5, 0.5] and marker["step"] == 6
    assert merge_weights("linear", 3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert merge_weights("ema:0.5", 2) == pytest.approx([1 / 3, 2 / 3])
    assert merge_main([str(run_dir), "--last", "2", "--weights", "median"]) == 2

    # Evaluated with the trainer's evaluation: a real checkpoint's loss is what the run logged at that step.
    assert evaluate_main([str(ckpt(run_dir, 6)), "--json"]) == 0
    assert last_json(capsys)["val_loss"] == pytest.approx(records(run_dir)[-1]["val_loss"], rel=1e-5)
    assert evaluate_main([str(tmp_path / "two" / "step_00000006"), "--json"]) == 0
    merged_loss = last_json(capsys)["val_loss"]
    assert math.isfinite(merged_loss) and merged_loss != records(run_dir)[-1]["val_loss"]

    # Exported, and branched from: the merged weights, the source's counters and data position.
    from pretrain.export import load_gpt

    model, tag, _ = load_gpt(run_dir, checkpoint_dir=str(tmp_path / "two"))
    assert tag == "step_00000006" and torch.equal(model.state_dict()["norm.weight"], two["norm.weight"])
    branch = tmp_path / "branch"
    res = run(tiny_data, branch, tmp_path / "two" / "step_00000006",
              **{**CONSTANT, "train.max_steps": 7, "eval.interval": 0, "train.precision": "fp32"})
    assert res.code == 0 and [r["step"] for r in records(branch)] == [7]
    assert records(branch)[0]["tokens"] == 7 * 8 * 64


# -- 6. evaluation --------------------------------------------------------------------------------

def test_validation_at_step_0_and_per_source(per_source_data, tmp_path, capsys):
    per_source = per_source_data
    sources = sorted(json.loads((per_source / "manifest.json").read_text())["splits"]["val"]["sources"])
    assert len(sources) >= 2
    run_dir = tmp_path / "run"
    assert run(per_source, run_dir, **{"train.max_steps": 2, "eval.interval": 0, "checkpoint.interval": 0}).code == 0
    first, *rest = records(run_dir)
    assert first["step"] == 0 and first["tokens"] == 0 and "loss" not in first
    assert abs(first["val_loss"] - math.log(512)) < 0.5  # the initial weights: about uniform
    assert rest[-1]["val_loss"] < first["val_loss"]
    for rec in (first, rest[-1]):
        assert all(math.isfinite(rec[f"val_loss/{s}"]) for s in sources)
    assert evaluate_main([str(ckpt(run_dir, 2)), "--json"]) == 0
    assert set(last_json(capsys)) >= {f"val_loss/{s}" for s in sources}


# -- 7. a checkpoint holding something other than weights -----------------------------------------

def _plant(path: Path, tmp_path: Path) -> None:
    """Replace a checkpoint's model file by a pickle that would run a command, and re-seal it so that its
    manifest and marker match (as anyone who can write the files can do)."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"module": Evil()}, path / "mp_rank_00_model_states.pt")
    marker = json.loads((path / "COMPLETE").read_text())
    marker.pop("manifest_sha256")
    commit(path, marker)


def test_a_pickled_object_in_a_sound_looking_checkpoint_is_refused_without_a_traceback(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    ov = {"train.max_steps": 4, "checkpoint.interval": 2, "checkpoint.keep_last": 3, "eval.interval": 0}
    ok(launch(tiny_data, run_dir, nproc=1, **ov))
    _plant(ckpt(run_dir, 4), tmp_path)
    assert CheckpointDir(run_dir / "checkpoints").verify("step_00000004") == []  # hash-consistent
    res = ok(launch(tiny_data, run_dir, nproc=1, **{**ov, "train.max_steps": 6}))
    assert "Traceback" not in res.stderr and not (tmp_path / "pwned").exists()
    (warning,) = [l for l in res.stdout.splitlines() if l.startswith("warning: skipping checkpoint")]
    assert "mp_rank_00_model_states.pt: refused: it holds a pickled object that is not weights" in warning
    assert "nothing in it was executed" in warning and "weights_only=False" in warning
    assert "resumed from" in res.stdout and "step_00000002 at step 2" in res.stdout

    # The same, with no sound checkpoint to fall back to: exit code 3, one message, no traceback.
    for step in (2, 4, 6):
        if ckpt(run_dir, step).exists():
            _plant(ckpt(run_dir, step), tmp_path)
    res = launch(tiny_data, run_dir, nproc=1, **{**ov, "train.max_steps": 8})
    assert res.returncode == 3 and "Traceback" not in res.stderr and "refused" in res.stderr
    from pretrain.export import main as export_main

    # The export and evaluate commands (their main, in this process: an exception would fail the test here).
    for main, argv in ((export_main, ["--run-dir", str(run_dir), "--out", str(tmp_path / "hf")]),
                       (evaluate_main, [str(ckpt(run_dir, 6))])):
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0 and "refused" in err, err
    assert not (tmp_path / "pwned").exists()
