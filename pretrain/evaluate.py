"""The validation loss of any checkpoint, merged ones included, with the trainer's own evaluation.

    python -m pretrain.evaluate CHECKPOINT [--data DIR] [--max-samples N] [--batch-size B] [--json]

CHECKPOINT is a checkpoint directory (``.../checkpoints/step_N`` or a merge's ``.../step_N``).
The data is the run's (from the checkpoint's ``config.yaml``) unless ``--data`` names another
tokenized directory (same tokenizer); per-source data also gives each source's loss. Runs in
this process on the CPU (or the first GPU), no launcher. Exit codes: 2 bad arguments or config,
3 a checkpoint that cannot be used (incomplete, damaged, or holding something other than weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence


def evaluate(checkpoint: str | Path, data: Optional[str] = None, max_samples: Optional[int] = None,
             batch_size: Optional[int] = None, verify: bool = True) -> dict:
    """{"val_loss", "val_ppl", "val_loss/<source>"..., "step", "checkpoint"} of ``checkpoint``."""
    import torch
    import yaml

    from .checkpoint import CheckpointDir
    from .run_config import run_config_from_dict
    from .training.evaluate import validation_loss

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
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = ckpts.model(tag, cfg.model).to(device)
    from .data import clean_stale_shared_memory

    clean_stale_shared_memory()
    n = max_samples or cfg.eval.max_samples
    b = batch_size or cfg.train.micro_batch_size
    seq_len = cfg.data.seq_len or source.manifest()["seq_len"]
    loss = validation_loss(model, source.build_val_dataset(), seq_len, n, b, device)
    out = {"checkpoint": str(path), "step": ckpts.marker(tag)["step"], "data": data_cfg.path,
           "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    per_source = source.build_val_datasets_per_source()
    for name, ds in per_source.items():
        out[f"val_loss/{name}"] = validation_loss(model, ds, seq_len, max(1, n // len(per_source)), b, device)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .checkpoint import CheckpointError
    from .config_loader import ConfigError

    p = argparse.ArgumentParser(prog="python -m pretrain.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint directory (.../step_NNNNNNNN)")
    p.add_argument("--data", help="another tokenized data directory (default: the run's data.path)")
    p.add_argument("--max-samples", type=int, help="validation sequences (default: the run's eval.max_samples)")
    p.add_argument("--batch-size", type=int, help="sequences per forward (default: the run's micro-batch)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check against the manifest")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    try:
        out = evaluate(args.checkpoint, args.data, args.max_samples, args.batch_size, verify=not args.no_verify)
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
              f"(ppl {out['val_ppl']:.1f})")
        for k, v in out.items():
            if k.startswith("val_loss/"):
                print(f"  {k.split('/', 1)[1]}: {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
