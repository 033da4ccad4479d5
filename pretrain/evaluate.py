"""The validation loss of any checkpoint, merged ones included, with the trainer's own evaluation.

    python -m pretrain.evaluate CHECKPOINT [--data DIR] [--max-samples N] [--batch-size B] [--json]

CHECKPOINT is a checkpoint directory (``.../checkpoints/step_N`` or a merge's ``.../step_N``).
The data is the run's (from the checkpoint's ``config.yaml``) unless ``--data`` names another
tokenized directory; per-source data also gives each source's loss. Data tokenized with another
tokenizer than the run's (its manifest's ``tokenizer.sha256`` or ``vocab_size`` differs from the
run's data manifest) is refused unless ``--allow-other-tokenizer``; ids beyond the model's vocabulary
and a validation split with no sample are always refused. Runs in
this process on the CPU (or the first GPU), no launcher. Exit codes: 2 bad arguments or config,
3 a checkpoint that cannot be used (incomplete, damaged, or holding something other than weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path


def _manifest(path: str) -> dict | None:
    """The manifest of a local data directory, None when there is none to read."""
    if "://" in path:
        return None
    from data_prep.manifest import read_manifest

    try:
        return read_manifest(path)
    except (OSError, ValueError):
        return None


def tokenizer_mismatch(run_data, data_path: str, data_manifest: dict) -> str | None:
    """Why ``data_path`` (its manifest ``data_manifest``) was not tokenized like the run's data ``run_data``
    (a DataConfig), or None. Compared: the manifests' ``tokenizer.sha256`` and ``vocab_size``; without a run
    manifest, the run's ``data.tokenizer`` file."""
    from data_prep.fsutil import sha256_file

    where = f"{Path(data_path) / 'manifest.json'}"
    theirs_sha = (data_manifest.get("tokenizer") or {}).get("sha256")
    theirs_vocab = data_manifest.get("vocab_size")
    ref = _manifest(run_data.path)
    if ref is not None:
        ref_where = f"{Path(run_data.path) / 'manifest.json'}"
        ours_sha, ours_vocab = (ref.get("tokenizer") or {}).get("sha256"), ref.get("vocab_size")
    elif run_data.tokenizer and Path(run_data.tokenizer).is_file():
        ref_where = f"the run's tokenizer {run_data.tokenizer}"
        ours_sha, ours_vocab = sha256_file(run_data.tokenizer), None
    else:
        return (f"the run's data manifest {Path(run_data.path) / 'manifest.json'} cannot be read and the run names no "
                f"tokenizer file, so {data_path} cannot be checked against the run's tokenizer")
    if ours_vocab is not None and theirs_vocab != ours_vocab:
        return f"{where} has vocab_size {theirs_vocab}, the run's data {ours_vocab} ({ref_where})"
    if theirs_sha != ours_sha:
        return (f"{where} names tokenizer sha256 {str(theirs_sha)[:12]}..., the run's is {str(ours_sha)[:12]}... "
                f"({ref_where}): another tokenizer")
    return None


def evaluate(checkpoint: str | Path, data: str | None = None, max_samples: int | None = None,
             batch_size: int | None = None, verify: bool = True, allow_other_tokenizer: bool = False) -> dict:
    """{"val_loss", "val_ppl", "val_loss/<source>"..., "step", "checkpoint"} of ``checkpoint``.

    Refused (ValueError) before the model is loaded: ``max_samples`` or ``batch_size`` below 1, ``data``
    tokenized with another tokenizer than the run's (unless ``allow_other_tokenizer``), token ids beyond the
    model's vocabulary, and data with no validation sample (a loss over 0 samples is no loss).
    """
    import torch
    import yaml

    from .checkpoint import CheckpointDir
    from .run_config import run_config_from_dict
    from .training.evaluate import validation_loss

    for flag, value in (("--max-samples", max_samples), ("--batch-size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} {value}: expected an integer >= 1")
    ckpts, tag = CheckpointDir.open(Path(checkpoint))
    if verify:
        ckpts.check(tag)
    path = ckpts.path(tag)
    cfg = run_config_from_dict(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
    data_cfg = dataclasses.replace(cfg.data, path=data) if data else cfg.data
    source = data_cfg.build()
    problems = source.check_files()
    if problems:
        from .config_loader import ConfigError

        raise ConfigError([f"data.{k} = {v!r}: expected {e}" for k, v, e in problems])
    manifest = source.manifest()
    where = f"{Path(data_cfg.path) / 'manifest.json'}"
    vocab = manifest.get("vocab_size")
    if cfg.model.vocab_size is not None and isinstance(vocab, int) and vocab > cfg.model.vocab_size:
        raise ValueError(f"--data {data_cfg.path}: {where} has vocab_size {vocab}, more than the model's "
                         f"{cfg.model.vocab_size} (model.vocab_size in {path / 'config.yaml'}): expected data "
                         "tokenized with the run's tokenizer")
    same = data is None or data == cfg.data.path or ("://" not in data + cfg.data.path
                                                     and Path(data).resolve() == Path(cfg.data.path).resolve())
    if not same and not allow_other_tokenizer:
        why = tokenizer_mismatch(cfg.data, data, manifest)
        if why:
            raise ValueError(f"--data {data}: {why}; a loss on it says nothing about the model (pass "
                             "--allow-other-tokenizer to evaluate anyway)")
    from .data import clean_stale_shared_memory, release_streaming_memory, shared_memory_lock, streaming_memory_ids

    clean_stale_shared_memory()
    before = streaming_memory_ids()
    try:  # its datasets' shared memory is released at the end: a study evaluates hundreds of merges in one process
        with shared_memory_lock(1):  # a run or another evaluation may be creating its loaders right now
            val = source.build_val_dataset()
            per_source = source.build_val_datasets_per_source()
        if val.num_samples < 1:
            raise ValueError(f"{data_cfg.path}: its validation split has no sample ({where}); nothing to evaluate")
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        model = ckpts.model(tag, cfg.model).to(device)
        n = max_samples or cfg.eval.max_samples
        b = batch_size or cfg.train.micro_batch_size
        seq_len = cfg.data.seq_len or manifest["seq_len"]
        loss = validation_loss(model, val, seq_len, n, b, device)
        out = {"checkpoint": str(path), "step": ckpts.marker(tag)["step"], "data": data_cfg.path,
               "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "samples": min(n, val.num_samples)}
        for name, ds in per_source.items():
            out[f"val_loss/{name}"] = validation_loss(model, ds, seq_len, max(1, n // len(per_source)), b, device)
        return out
    finally:
        release_streaming_memory(before)


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .cli_numbers import integer
    from .config_loader import ConfigError

    p = argparse.ArgumentParser(prog="python -m pretrain.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint directory (.../step_NNNNNNNN)")
    p.add_argument("--data", help="another tokenized data directory (default: the run's data.path), tokenized with "
                                  "the run's tokenizer")
    p.add_argument("--allow-other-tokenizer", action="store_true",
                   help="evaluate --data even when its manifest names another tokenizer than the run's")
    p.add_argument("--max-samples", type=integer(1), help="validation sequences, >= 1 (default: the run's eval.max_samples)")
    p.add_argument("--batch-size", type=integer(1), help="sequences per forward, >= 1 (default: the run's micro-batch)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check against the manifest")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    try:
        out = evaluate(args.checkpoint, args.data, args.max_samples, args.batch_size, verify=not args.no_verify,
                       allow_other_tokenizer=args.allow_other_tokenizer)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['checkpoint']} (step {out['step']}) on {out['data']}: validation loss {out['val_loss']:.4f} "
              f"(ppl {out['val_ppl']:.1f}, {out['samples']} sequences)")
        for k, v in out.items():
            if k.startswith("val_loss/"):
                print(f"  {k.split('/', 1)[1]}: {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
