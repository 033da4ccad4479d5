"""Export a trained checkpoint to Hugging Face transformers format.

::

    python -m pretrain.export --run-dir runs/NAME --out exported/NAME [--tag step_00001000] [--format llama|phi3]

Reads ``RUN_DIR/config.yaml`` (the resolved run config the trainer saved; its
``model:`` section holds the :class:`GPTConfig` fields) and a checkpoint under
the run's checkpoint directory (``RUN_DIR/checkpoints`` unless the run config
or ``--checkpoint-dir`` says otherwise). Only checkpoints with a ``COMPLETE``
marker are used (see :mod:`pretrain.checkpoint`); the default is the newest,
and its files are checked against the sizes and hashes in the marker.

The ZeRO-partitioned weights are consolidated to fp32 with DeepSpeed's own
``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``
(which unpickles the checkpoint files: export only checkpoints you trust),
loaded into a :class:`GPT` to check that they fit the config, renamed to the
Hugging Face architecture and written as ``OUT/model.safetensors`` +
``OUT/config.json``, with the run's tokenizer when it can be found (the run
config's ``data.tokenizer``, else the data manifest's): a sentencepiece model as
``tokenizer.model`` + ``tokenizer_config.json`` for ``LlamaTokenizer``, a
tokenizer.json as ``tokenizer.json`` (without its post-processor: data_prep adds
no BOS/EOS) + ``tokenizer_config.json`` for ``PreTrainedTokenizerFast``.
Everything is written to a temporary directory next to ``OUT`` and renamed into
place. ``OUT`` follows the output rule (:mod:`pretrain.outputs`): it may not be, contain or lie
inside the run directory, its checkpoints or its tokenizer, and an existing ``OUT`` is replaced
only with ``--overwrite`` and only when it is an earlier export (config.json + model.safetensors).
Refused before anything is written: weights holding a NaN or an infinity (a diverged run), and a
tokenizer with more pieces than the model's ``vocab_size`` or another vocabulary (size or file)
than the run's data manifest names.

Formats (``llama`` -> ``LlamaForCausalLM``, ``phi3`` -> ``Phi3ForCausalLM``), the name map, the
folding of forward multipliers (muP's, or set by hand) into the weights and the refusal of what these
classes cannot represent (ALiBi, LayerNorm, a GELU MLP, QK-norm) live in :mod:`pretrain.hf`, with
:func:`~pretrain.hf.load_hf`, the inverse (``checkpoint.init_from: hf:DIR``). This module is the command:
reading the run, its checkpoint and its tokenizer, the output rule, and the checks before writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.hf import (  # noqa: F401  (re-exported: the export's callers and tests import them from here)
    ARCHITECTURES,
    CONFIG_FILE,
    FORMATS,
    WEIGHTS_FILE,
    HFError,
    fold_multipliers,
    hf_config,
    hf_config_differences,
    hf_format,
    hf_tensors,
    hf_tied,
    load_hf,
    nonfinite_tensors,
    sha256_files,
    to_hf_state_dict,
    unsupported,
    weight_names,
    write_hf,
    write_tokenizer,
)
from pretrain.model.config import GPTConfig

if TYPE_CHECKING:
    from pretrain.model.gpt import GPT

ExportError = HFError  # one error type for the Hugging Face layout and the command (existing callers catch this name)
_write_tokenizer = write_tokenizer  # its old name here


# ---- checkpoints -------------------------------------------------------------------------------


def load_gpt(run_dir: Path, tag: str | None = None, checkpoint_dir: str | None = None,
             verify: bool = True) -> tuple[GPT, str, dict[str, Any]]:
    """``(model in fp32 eval mode, tag, run config dict)`` from a run's checkpoint."""
    from pretrain.checkpoint import CheckpointError
    from pretrain.config_loader import ConfigError
    from pretrain.rundir import RunDir, RunDirError

    try:
        run = RunDir(run_dir)
        config = run.model_config()
        ckpts = run.checkpoints(checkpoint_dir)
        tag = ckpts.tag_of(tag)
        if verify:
            ckpts.check(tag)
        model = ckpts.model(tag, config)
    except (RunDirError, ConfigError, CheckpointError) as e:
        raise ExportError(str(e)) from None
    return model, tag, run.config_dict


# ---- tokenizer ---------------------------------------------------------------------------------


def _sentencepiece_info(tok: Path | None) -> tuple[dict[str, tuple[int | None, str | None]], bool]:
    """``({"bos"|"eos"|"unk": (id, piece)}, adds_dummy_prefix)`` of a sentencepiece model
    (ids None without one)."""
    ids: dict[str, tuple[int | None, str | None]] = {"bos": (None, None), "eos": (None, None), "unk": (None, None)}
    if tok is None:
        return ids, False
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    for name, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())):
        if i >= 0:
            ids[name] = (i, sp.id_to_piece(i))
    pieces = sp.encode("a", out_type=str)
    return ids, bool(pieces) and pieces[0].startswith("\u2581")


def _tokenizers_info(tok: Path) -> dict[str, tuple[int | None, str | None]]:
    """``{"bos"|"eos"|"unk": (id, token)}`` of a tokenizer.json (data_prep's names for them)."""
    from data_prep.tokenizer import HFTokenizer

    found = HFTokenizer(tok).special
    return {name: found.get(name, (None, None)) for name in ("bos", "eos", "unk")}


# ---- export ------------------------------------------------------------------------------------


EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what every export writes: an earlier export holds them


def _check_out(out: Path, overwrite: bool, inputs: dict[str, Path | None]) -> None:
    """The output rule (:mod:`pretrain.outputs`) for ``--out``, before any work: ExportError naming the path."""
    from pretrain.outputs import OutputError, check_disjoint, check_replaceable

    try:
        check_disjoint(out, {k: v for k, v in inputs.items() if v is not None}, "--out")
        check_replaceable(out, overwrite=overwrite, owned_by=EXPORT_FILES, flag="--out")
    except OutputError as e:
        raise ExportError(str(e)) from None


def _run_data_manifest(rundir) -> tuple[Path | None, dict[str, Any] | None]:
    """``(path, contents)`` of the manifest of the data the run trained on, when it can be read here."""
    data = rundir.config_dict.get("data") or {}
    path = data.get("path")
    if not isinstance(path, str) or "://" in path:
        return None, None
    manifest = Path(path) / "manifest.json"
    try:
        obj = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return manifest, None
    return manifest, obj if isinstance(obj, dict) else None


def tokenizer_problems(tok: Path, config: GPTConfig, rundir) -> list[str]:
    """Why ``tok`` is not the tokenizer of the run's model: a vocabulary larger than the model's rows, or
    another vocabulary size or file than the one the run's data was tokenized with (its manifest)."""
    from data_prep.fsutil import sha256_file
    from data_prep.tokenizer import load_tokenizer

    try:
        vocab = load_tokenizer(tok).vocab_size
    except Exception as e:  # noqa: BLE001  (sentencepiece and tokenizers raise their own types)
        return [f"tokenizer {tok}: cannot be read ({type(e).__name__}: {e})"]
    problems = []
    if vocab > config.vocab_size:
        problems.append(f"tokenizer {tok} has {vocab} pieces but the model ({rundir.path / 'config.yaml'}) has only "
                        f"model.vocab_size = {config.vocab_size} embedding rows: expected at most {config.vocab_size}")
    manifest, obj = _run_data_manifest(rundir)
    if obj is not None:
        want = obj.get("vocab_size")
        if isinstance(want, int) and vocab != want:
            problems.append(f"tokenizer {tok} has {vocab} pieces but the run's data was tokenized with {want} "
                            f"({manifest}: vocab_size): expected the tokenizer the run trained on")
        want_sha = (obj.get("tokenizer") or {}).get("sha256") if isinstance(obj.get("tokenizer"), dict) else None
        if isinstance(want_sha, str) and not problems and sha256_file(tok) != want_sha:
            problems.append(f"tokenizer {tok} is not the file the run's data was tokenized with ({manifest}: "
                            f"tokenizer.sha256 {want_sha[:12]}..., path {obj['tokenizer'].get('path')})")
    return problems


def export(run_dir: str | Path, out: str | Path, tag: str | None = None, fmt: str = "llama",
           checkpoint_dir: str | None = None, dtype: str = "float32", overwrite: bool = False,
           verify: bool = True, log=print) -> Path:
    """Write ``out`` (see the module docstring); return its path.

    ``out`` follows the output rule (:mod:`pretrain.outputs`): it may not be, contain or lie inside the run
    directory, its checkpoint directory or its tokenizer; an existing ``out`` is replaced only with
    ``overwrite`` and only when it is an earlier export (it holds config.json and model.safetensors),
    atomically. Non-finite weights and a tokenizer that does not fit the model are refused. Every check
    runs before anything is written.
    """
    from data_prep.tokenizer import tokenizer_kind
    from pretrain.outputs import staged_dir

    run_dir, out = Path(run_dir), Path(out)
    if dtype not in ("float32", "bfloat16"):
        raise ExportError(f"dtype {dtype!r}: expected float32 or bfloat16")
    from pretrain.config_loader import ConfigError
    from pretrain.rundir import RunDir, RunDirError

    try:
        rundir = RunDir(run_dir)
        config = rundir.model_config()
        ckpt_root = rundir.checkpoints(checkpoint_dir).root
    except (RunDirError, ConfigError) as e:
        raise ExportError(str(e)) from None
    tok = rundir.tokenizer_path()
    data_manifest, _ = _run_data_manifest(rundir)
    _check_out(out, overwrite, {"run directory": run_dir, "checkpoint directory": ckpt_root, "tokenizer": tok,
                                "run's data directory": data_manifest.parent if data_manifest else None})
    reasons = unsupported(config, fmt)
    if reasons:
        raise ExportError(f"cannot export {run_dir} as {fmt} ({ARCHITECTURES.get(fmt, fmt)}):\n  " + "\n  ".join(reasons))

    if tok is not None and not tok.is_file():
        log(f"warning: tokenizer {tok} not found; exporting without it")
        tok = None
    if tok is not None:
        problems = tokenizer_problems(tok, config, rundir)
        if problems:
            raise ExportError(f"cannot export {run_dir} with its tokenizer:\n  " + "\n  ".join(problems))

    model, tag, run = load_gpt(run_dir, tag, checkpoint_dir, verify)
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise ExportError(f"checkpoint {ckpt_root / tag} holds non-finite values (NaN or infinity) in {len(bad)} of "
                          f"{len(model.state_dict())} tensors: {', '.join(bad)}; a diverged run is not exported "
                          "(export an earlier checkpoint with --tag)")
    tensors = hf_tensors(model.state_dict(), config, fmt, dtype)
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ExportError(f"checkpoint {ckpt_root / tag}: the {fmt} {dtype} tensors {', '.join(bad)} are not finite "
                          "(the folded multipliers or the dtype overflow them)")

    kind = tokenizer_kind(tok) if tok is not None else "sentencepiece"
    special, dummy_prefix = (_tokenizers_info(tok), False) if kind == "tokenizers" else _sentencepiece_info(tok)

    with staged_dir(out, overwrite=overwrite, owned_by=EXPORT_FILES, flag="--out") as tmp:
        write_hf(tmp, tensors, config, fmt, dtype, special["bos"][0], special["eos"][0], source=f"{run_dir}:{tag}")
        if tok is not None:
            write_tokenizer(tok, kind, tmp, special, dummy_prefix, config.max_seq_len)
        for f in tmp.iterdir():
            f.chmod(0o644)
    log(f"exported {run_dir} checkpoint {tag} as {ARCHITECTURES[fmt]} ({dtype}) to {out}"
        + ("" if tok is not None else " (no tokenizer)"))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--out", required=True, help="output directory (written atomically; outside the run directory, "
                                                 "its checkpoints and its tokenizer)")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step_00001000 (default: newest complete)")
    p.add_argument("--format", default="llama", choices=FORMATS, help="Hugging Face architecture (default: llama)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint directory (default: from the run config)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="tensor dtype written")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier export")
    p.add_argument("--no-verify", action="store_true", help="skip checking file hashes against the COMPLETE marker")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        export(args.run_dir, args.out, args.tag, args.format, args.checkpoint_dir, args.dtype,
               args.overwrite, not args.no_verify)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
