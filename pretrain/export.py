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

Formats:

* ``llama`` -> ``LlamaForCausalLM``: RoPE, RMSNorm, SwiGLU; GQA, tied or untied
  embeddings, and Linear biases (``attention_bias``/``mlp_bias``) are supported.
* ``phi3`` -> ``Phi3ForCausalLM``: the same, with fused ``qkv_proj`` (q, k, v
  stacked) and ``gate_up_proj`` (gate, then up); no biases.

Forward multipliers (muP's, or set by hand) are folded into the weights
(:func:`fold_multipliers`): ``emb_mult`` into the embedding, ``logit_mult`` into
``lm_head`` (written as its own tensor, ``tie_word_embeddings: false``, when a tied
model's two multipliers differ) and ``attn_scale * sqrt(head_dim)`` into ``q_proj``.
Configurations these classes cannot represent are refused with the reasons:
ALiBi, LayerNorm, a GELU MLP and QK-norm.

:func:`load_hf` is the inverse (continued pretraining, ``checkpoint.init_from: hf:DIR``):
the same name map, read back from ``model.safetensors`` or a sharded index.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from pretrain.model.config import GPTConfig
from pretrain.model.gpt import GPT

FORMATS = ("llama", "phi3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}


class ExportError(RuntimeError):
    """The run, checkpoint or architecture cannot be exported (the message says why)."""


# ---- what Hugging Face can represent --------------------------------------------------------


def unsupported(config: GPTConfig, fmt: str) -> list[str]:
    """Reasons why ``config`` cannot be written as ``fmt``; empty when it can."""
    if fmt not in FORMATS:
        return [f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}"]
    arch = ARCHITECTURES[fmt]
    reasons = []
    if config.pos != "rope":
        reasons.append(f"pos={config.pos!r}: {arch} only has RoPE positions (ALiBi is not representable)")
    if config.norm != "rmsnorm":
        reasons.append(f"norm={config.norm!r}: {arch} only has RMSNorm")
    if config.mlp != "swiglu":
        reasons.append(f"mlp={config.mlp!r}: {arch} only has a gated SiLU (SwiGLU) MLP")
    if config.qk_norm:
        reasons.append(f"qk_norm=True: {arch} has no QK-norm")
    if config.bias and fmt == "phi3":
        reasons.append("bias=True: Phi3ForCausalLM has no Linear biases (use --format llama)")
    return reasons


def hf_config(config: GPTConfig, fmt: str, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
              dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of the Hugging Face model (after :func:`unsupported` is empty)."""
    common = {
        "architectures": [ARCHITECTURES[fmt]],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_scaling": None,
        "tie_word_embeddings": hf_tied(config),
        "attention_dropout": 0.0,
        "initializer_range": config.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }
    if fmt == "llama":
        return {**common, "model_type": "llama", "head_dim": config.head_dim,
                "attention_bias": config.bias, "mlp_bias": config.bias, "pretraining_tp": 1}
    return {**common, "model_type": "phi3", "original_max_position_embeddings": config.max_seq_len,
            "partial_rotary_factor": 1.0, "sliding_window": None, "resid_pdrop": 0.0, "embd_pdrop": 0.0}


# ---- weight names ----------------------------------------------------------------------------

_LLAMA_LINEAR = {  # ours (under blocks.{i}.) -> Llama (under model.layers.{i}.)
    "attn.wq": "self_attn.q_proj",
    "attn.wk": "self_attn.k_proj",
    "attn.wv": "self_attn.v_proj",
    "attn.wo": "self_attn.o_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w3": "mlp.up_proj",
    "mlp.w2": "mlp.down_proj",
}
_PHI3_FUSED = {  # Phi-3 (under model.layers.{i}.) -> ours (under blocks.{i}.), stacked along dim 0 in this order
    "self_attn.qkv_proj": ("attn.wq", "attn.wk", "attn.wv"),
    "self_attn.o_proj": ("attn.wo",),
    "mlp.gate_up_proj": ("mlp.w1", "mlp.w3"),
    "mlp.down_proj": ("mlp.w2",),
}


def hf_tied(config: GPTConfig) -> bool:
    """Whether the export ties ``lm_head`` to the embedding: only when ours is tied and the folded
    multipliers agree (muP's embedding and logit multipliers differ, so its tied matrix is written twice)."""
    emb_mult, logit_mult, _ = config.multipliers()
    return config.tie_embeddings and emb_mult == logit_mult


def weight_names(config: GPTConfig, fmt: str) -> dict[str, tuple[str, ...]]:
    """``{Hugging Face tensor: the GPT tensors stacked along dim 0 to make it}``: the one name map,
    used by the export and (inverted) by :func:`load_hf`. With :func:`hf_tied` no ``lm_head.weight``
    (transformers ties it from ``tie_word_embeddings``)."""
    names: dict[str, tuple[str, ...]] = {"model.embed_tokens.weight": ("tok_emb.weight",),
                                         "model.norm.weight": ("norm.weight",)}
    if not hf_tied(config):
        names["lm_head.weight"] = ("lm_head.weight",)
    leaves = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        names[dst + "input_layernorm.weight"] = (src + "attn_norm.weight",)
        names[dst + "post_attention_layernorm.weight"] = (src + "mlp_norm.weight",)
        if fmt == "llama":
            for ours, theirs in _LLAMA_LINEAR.items():
                for leaf in leaves:
                    names[f"{dst}{theirs}.{leaf}"] = (f"{src}{ours}.{leaf}",)
        else:
            for theirs, ours_all in _PHI3_FUSED.items():
                names[f"{dst}{theirs}.weight"] = tuple(f"{src}{o}.weight" for o in ours_all)
    return names


def fold_multipliers(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A copy of a GPT state dict with the forward multipliers folded into the weights (exact up to
    rounding): ``emb_mult`` into the embedding (its output feeds the residual stream directly),
    ``logit_mult`` into ``lm_head`` (a separate copy when tied, see :func:`hf_tied`), and
    ``attn_scale / (1/sqrt(head_dim))`` into ``wq`` (weight and bias; RoPE is linear, so scaling q
    before it is exact)."""
    emb_mult, logit_mult, attn_scale = config.multipliers()
    q_mult = attn_scale * math.sqrt(config.head_dim)
    out = dict(sd)
    head = sd.get("lm_head.weight", sd["tok_emb.weight"])
    if emb_mult != 1.0:
        out["tok_emb.weight"] = sd["tok_emb.weight"] * emb_mult
    if logit_mult != 1.0:
        out["lm_head.weight"] = head * logit_mult
    elif not hf_tied(config):
        out["lm_head.weight"] = head
    if q_mult != 1.0:
        for i in range(config.n_layers):
            for leaf in ("weight", "bias") if config.bias else ("weight",):
                key = f"blocks.{i}.attn.wq.{leaf}"
                out[key] = sd[key] * q_mult
    return out


def to_hf_state_dict(sd: dict[str, torch.Tensor], config: GPTConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Fold the multipliers (:func:`fold_multipliers`), rename (and for Phi-3 fuse) a :class:`GPT`
    state dict into ``fmt``'s names."""
    sd = fold_multipliers(sd, config)
    return {hf: sd[ours[0]] if len(ours) == 1 else torch.cat([sd[o] for o in ours], dim=0)
            for hf, ours in weight_names(config, fmt).items()}


# ---- loading Hugging Face weights (continued pretraining) ---------------------------------------

_HF_DEFAULTS = {"tie_word_embeddings": False, "hidden_act": "silu", "rope_scaling": None,
                "attention_bias": False, "mlp_bias": False, "partial_rotary_factor": 1.0}
_HF_COMPARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
                "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias", "partial_rotary_factor")


def hf_format(directory: Path) -> tuple[str, dict[str, Any]]:
    """``(fmt, config.json)`` of a Hugging Face model directory in one of :data:`FORMATS`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ExportError(f"{path} not found: expected a Hugging Face model directory (config.json + safetensors)")
    got = json.loads(path.read_text())
    fmt = {"llama": "llama", "phi3": "phi3"}.get(got.get("model_type"))
    if fmt is None:
        raise ExportError(f"{path}: model_type = {got.get('model_type')!r}: expected 'llama' or 'phi3'")
    return fmt, got


def hf_config_differences(config: GPTConfig, directory: Path) -> list[str]:
    """How ``DIR/config.json`` differs from the architecture ``config`` (empty when they match), including
    what the load cannot invert: muP and other forward multipliers, and what :func:`unsupported` refuses."""
    fmt, got = hf_format(directory)
    problems = [f"model: {r}" for r in unsupported(config, fmt)]
    emb_mult, logit_mult, attn_scale = config.multipliers()
    if config.mup is not None:
        problems.append("model.mup is set: Hugging Face weights hold no muP multipliers (unfolding them is not "
                        "supported); init_from needs a standard-parameterization model (mup: null)")
    elif (emb_mult, logit_mult) != (1.0, 1.0) or not math.isclose(attn_scale, config.head_dim ** -0.5, rel_tol=1e-12):
        problems.append(f"model: emb_mult={emb_mult}, logit_mult={logit_mult}, attn_scale={attn_scale}: expected "
                        f"1.0, 1.0 and 1/sqrt(head_dim) (Hugging Face weights hold no multipliers)")
    expected = hf_config(config, fmt)
    for key in _HF_COMPARED:
        if key not in expected:
            continue
        default = expected["num_attention_heads"] if key == "num_key_value_heads" else \
            expected["hidden_size"] // expected["num_attention_heads"] if key == "head_dim" else _HF_DEFAULTS.get(key)
        value, want = got.get(key, default), expected[key]
        same = math.isclose(value, want, rel_tol=1e-9) if isinstance(want, float) and isinstance(value, (int, float)) \
            else value == want
        if not same:
            problems.append(f"{key}: {value!r} in config.json, expected {want!r} (ours)")
    return problems


def _weight_files(directory: Path) -> tuple[list[Path], dict[str, Path]]:
    """The safetensors files and ``{tensor: file}``: ``model.safetensors`` or a sharded index."""
    from safetensors import safe_open

    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if index.is_file():
        where = {k: directory / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        files = sorted(set(where.values()))
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ExportError(f"{index} names shard files that do not exist: {', '.join(missing)}")
        return files, where
    if not single.is_file():
        raise ExportError(f"{directory}: neither model.safetensors nor model.safetensors.index.json found")
    with safe_open(str(single), framework="pt") as f:
        return [single], {k: single for k in f.keys()}


def sha256_files(files: Sequence[Path]) -> dict[str, str]:
    import hashlib

    out = {}
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[path.name] = h.hexdigest()
    return out


def _read(names: dict[str, tuple[str, ...]], where: dict[str, Path], handles: dict[Path, Any],
          ours_shapes: dict[str, tuple[int, ...]], sd: dict[str, torch.Tensor], problems: list[str]) -> None:
    """Read each Hugging Face tensor of ``names`` into ``sd`` (split into ours), or a problem naming it."""
    for hf, ours in names.items():
        if hf not in where:
            continue
        sizes = [ours_shapes[o] for o in ours]
        want = (sum(s[0] for s in sizes), *sizes[0][1:])
        shape = tuple(handles[where[hf]].get_slice(hf).get_shape())
        if shape != want:
            problems.append(f"{where[hf]}: tensor {hf} has shape {list(shape)}, expected {list(want)} "
                            f"(for {' + '.join(ours)})")
            continue
        parts = handles[where[hf]].get_tensor(hf).float().split([s[0] for s in sizes], dim=0)
        sd.update(zip(ours, parts))

def load_hf(directory: str | Path, config: GPTConfig) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """``(GPT state dict in fp32, weight files)`` from a Llama / Phi-3 directory written by :func:`export` or
    transformers: the inverse of :func:`to_hf_state_dict` (Phi-3's fused projections split back). Raises
    ExportError listing every architecture difference, missing, unexpected or misshapen tensor."""
    import torch
    from safetensors import safe_open

    directory = Path(directory)
    problems = hf_config_differences(config, directory)
    if problems:
        raise ExportError(f"{directory / 'config.json'} does not match the model config:\n  " + "\n  ".join(problems))
    fmt, _ = hf_format(directory)
    files, where = _weight_files(directory)
    names = weight_names(config, fmt)
    ignored = {"lm_head.weight"} if config.tie_embeddings else set()  # tied checkpoints may carry a copy
    with torch.device("meta"):
        ours_shapes = {k: tuple(v.shape) for k, v in config.build().state_dict().items()}
    problems = [f"{where[k]}: unexpected tensor {k}" for k in sorted(set(where) - set(names) - ignored)
                if not k.endswith("rotary_emb.inv_freq")]
    problems += [f"{directory}: missing tensor {k}" for k in names if k not in where]
    sd: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in files}
        _read(names, where, handles, ours_shapes, sd, problems)
    if problems:
        raise ExportError(f"cannot load {directory} into the model:\n  " + "\n  ".join(problems))
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    return {k: v.contiguous() for k, v in sd.items()}, files


# ---- checkpoints -------------------------------------------------------------------------------


def load_gpt(run_dir: Path, tag: Optional[str] = None, checkpoint_dir: Optional[str] = None,
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


def _sentencepiece_info(tok: Optional[Path]) -> tuple[dict[str, tuple[Optional[int], Optional[str]]], bool]:
    """``({"bos"|"eos"|"unk": (id, piece)}, adds_dummy_prefix)`` of a sentencepiece model
    (ids None without one)."""
    ids: dict[str, tuple[Optional[int], Optional[str]]] = {"bos": (None, None), "eos": (None, None), "unk": (None, None)}
    if tok is None:
        return ids, False
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    for name, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())):
        if i >= 0:
            ids[name] = (i, sp.id_to_piece(i))
    pieces = sp.encode("a", out_type=str)
    return ids, bool(pieces) and pieces[0].startswith("\u2581")


def _tokenizers_info(tok: Path) -> dict[str, tuple[Optional[int], Optional[str]]]:
    """``{"bos"|"eos"|"unk": (id, token)}`` of a tokenizer.json (data_prep's names for them)."""
    from data_prep.tokenizer import HFTokenizer

    found = HFTokenizer(tok).special
    return {name: found.get(name, (None, None)) for name in ("bos", "eos", "unk")}


def _write_tokenizer(tok: Path, kind: str, dest: Path, special: dict[str, tuple[Optional[int], Optional[str]]],
                     dummy_prefix: bool, max_seq_len: int) -> None:
    """The run's tokenizer into ``dest``, set up to encode exactly as data_prep did: no BOS/EOS added."""
    named = {f"{name}_token": piece for name, (_, piece) in special.items() if piece is not None}
    if kind == "tokenizers":  # tokenizer.json for PreTrainedTokenizerFast
        data = json.loads(tok.read_text(encoding="utf-8"))
        data.update(post_processor=None, truncation=None, padding=None)  # data_prep encoded without them
        (dest / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                   "split_special_tokens": True,  # "<|endoftext|>" in a text is text, as data_prep encoded it
                   "model_max_length": max_seq_len, **named}
    else:
        shutil.copyfile(tok, dest / "tokenizer.model")
        tok_cfg = {
            "tokenizer_class": "LlamaTokenizer",
            "legacy": True,  # plain sentencepiece encoding, exactly as data_prep tokenized ...
            "add_prefix_space": dummy_prefix,  # ... (the fast tokenizer converted from it too)
            "add_bos_token": False,  # data_prep adds no BOS ...
            "add_eos_token": False,  # ... and appends EOS after each document itself
            "clean_up_tokenization_spaces": False,
            "model_max_length": max_seq_len,
            **named,
        }
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


# ---- export ------------------------------------------------------------------------------------


EXPORT_FILES = ("config.json", "model.safetensors")  # what every export writes: an earlier export holds them


def _check_out(out: Path, overwrite: bool, inputs: dict[str, Optional[Path]]) -> None:
    """The output rule (:mod:`pretrain.outputs`) for ``--out``, before any work: ExportError naming the path."""
    from pretrain.outputs import OutputError, check_disjoint, check_replaceable

    try:
        check_disjoint(out, {k: v for k, v in inputs.items() if v is not None}, "--out")
        check_replaceable(out, overwrite=overwrite, owned_by=EXPORT_FILES, flag="--out")
    except OutputError as e:
        raise ExportError(str(e)) from None


def _run_data_manifest(rundir) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
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


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]


def export(run_dir: str | Path, out: str | Path, tag: Optional[str] = None, fmt: str = "llama",
           checkpoint_dir: Optional[str] = None, dtype: str = "float32", overwrite: bool = False,
           verify: bool = True, log=print) -> Path:
    """Write ``out`` (see the module docstring); return its path.

    ``out`` follows the output rule (:mod:`pretrain.outputs`): it may not be, contain or lie inside the run
    directory, its checkpoint directory or its tokenizer; an existing ``out`` is replaced only with
    ``overwrite`` and only when it is an earlier export (it holds config.json and model.safetensors),
    atomically. Non-finite weights and a tokenizer that does not fit the model are refused. Every check
    runs before anything is written.
    """
    from safetensors.torch import save_file

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
    torch_dtype = getattr(torch, dtype)
    tensors = {k: v.detach().to(torch_dtype).contiguous() for k, v in to_hf_state_dict(model.state_dict(), config, fmt).items()}
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ExportError(f"checkpoint {ckpt_root / tag}: the {fmt} {dtype} tensors {', '.join(bad)} are not finite "
                          "(the folded multipliers or the dtype overflow them)")

    kind = tokenizer_kind(tok) if tok is not None else "sentencepiece"
    special, dummy_prefix = (_tokenizers_info(tok), False) if kind == "tokenizers" else _sentencepiece_info(tok)

    with staged_dir(out, overwrite=overwrite, owned_by=EXPORT_FILES, flag="--out") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": f"{run_dir}:{tag}"})
        cfg = hf_config(config, fmt, special["bos"][0], special["eos"][0], dtype)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if tok is not None:
            _write_tokenizer(tok, kind, tmp, special, dummy_prefix, config.max_seq_len)
        for f in tmp.iterdir():
            f.chmod(0o644)
    log(f"exported {run_dir} checkpoint {tag} as {ARCHITECTURES[fmt]} ({dtype}) to {out}"
        + ("" if tok is not None else " (no tokenizer)"))
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
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
