"""Hugging Face interop: our :class:`GPT` weights <-> Llama / Phi-3 ``safetensors`` directories.

The one place that knows the Hugging Face layout, in both directions:

* **out** (``python -m pretrain.export``): :func:`unsupported` says what the target class cannot
  represent, :func:`hf_config` writes its ``config.json``, :func:`to_hf_state_dict` folds the forward
  multipliers into the weights (:func:`fold_multipliers`) and renames them (:func:`weight_names`),
  :func:`hf_tensors` casts them, :func:`write_hf` writes ``model.safetensors`` + ``config.json`` and
  :func:`write_tokenizer` the tokenizer files (``tokenizer.model`` or ``tokenizer.json`` +
  ``tokenizer_config.json``).
* **in** (``checkpoint.init_from: hf:DIR``): :func:`hf_format` reads ``DIR/config.json``,
  :func:`hf_config_differences` compares it with the run's model config (the run config's validation
  uses it), and :func:`load_hf` reads the weights back (``model.safetensors`` or a sharded index),
  checking every tensor's presence and shape.

Formats:

* ``llama`` -> ``LlamaForCausalLM``: RoPE, RMSNorm, SwiGLU; GQA, tied or untied embeddings, and
  Linear biases (``attention_bias``/``mlp_bias``) are supported.
* ``phi3`` -> ``Phi3ForCausalLM``: the same, with fused ``qkv_proj`` (q, k, v stacked) and
  ``gate_up_proj`` (gate, then up); no biases.

Every problem is an :class:`HFError` whose message names the file, tensor or key and what was
expected (``pretrain.export.ExportError`` is the same class).

Layering: this module imports only the model package (:mod:`pretrain.model`) and external
libraries (torch, safetensors, json), never a command, the run config, the trainer or the run
directory / checkpoint code, nor ``data_prep`` (reading *our* tokenizer stays in the export command).
torch and safetensors are imported where they are used: validating a run config that names
``init_from: hf:DIR`` reads only ``config.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.model.config import GPTConfig

if TYPE_CHECKING:
    import torch

FORMATS = ("llama", "phi3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class HFError(RuntimeError):
    """A model or directory that cannot be written as or read from Hugging Face's layout (the message says why)."""


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


def hf_config(config: GPTConfig, fmt: str, bos_id: int | None = None, eos_id: int | None = None,
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


# ---- out: our weights -> Hugging Face ------------------------------------------------------------


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
    import torch

    sd = fold_multipliers(sd, config)
    return {hf: sd[ours[0]] if len(ours) == 1 else torch.cat([sd[o] for o in ours], dim=0)
            for hf, ours in weight_names(config, fmt).items()}


def hf_tensors(sd: dict[str, torch.Tensor], config: GPTConfig, fmt: str,
               dtype: str = "float32") -> dict[str, torch.Tensor]:
    """:func:`to_hf_state_dict` in ``dtype`` (``float32`` or ``bfloat16``), detached and contiguous: what
    :func:`write_hf` saves."""
    import torch

    if dtype not in ("float32", "bfloat16"):
        raise HFError(f"dtype {dtype!r}: expected float32 or bfloat16")
    torch_dtype = getattr(torch, dtype)
    return {k: v.detach().to(torch_dtype).contiguous() for k, v in to_hf_state_dict(sd, config, fmt).items()}


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity."""
    import torch

    return [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]


def write_hf(dest: Path, tensors: dict[str, torch.Tensor], config: GPTConfig, fmt: str, dtype: str = "float32",
             bos_id: int | None = None, eos_id: int | None = None, source: str = "") -> None:
    """``dest/model.safetensors`` (``tensors`` from :func:`hf_tensors`, ``source`` in its metadata) and
    ``dest/config.json`` (:func:`hf_config`). ``dest`` is an existing directory; the caller stages it."""
    from safetensors.torch import save_file

    dest = Path(dest)
    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"format": "pt", "source": source})
    (dest / CONFIG_FILE).write_text(json.dumps(hf_config(config, fmt, bos_id, eos_id, dtype), indent=2) + "\n")


def write_tokenizer(tok: Path, kind: str, dest: Path, special: dict[str, tuple[int | None, str | None]],
                    dummy_prefix: bool, max_seq_len: int) -> None:
    """The run's tokenizer into ``dest``, set up to encode exactly as data_prep did: no BOS/EOS added.

    ``kind`` is ``"tokenizers"`` (a tokenizer.json, written for ``PreTrainedTokenizerFast`` without its
    post-processor, truncation and padding) or ``"sentencepiece"`` (copied as ``tokenizer.model`` for
    ``LlamaTokenizer``); ``special`` is ``{"bos"|"eos"|"unk": (id, piece)}`` and ``dummy_prefix`` whether
    the sentencepiece model adds one (both read from the tokenizer by the caller)."""
    named = {f"{name}_token": piece for name, (_, piece) in special.items() if piece is not None}
    if kind == "tokenizers":  # tokenizer.json for PreTrainedTokenizerFast
        data = json.loads(Path(tok).read_text(encoding="utf-8"))
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


# ---- in: Hugging Face -> our weights (continued pretraining) -------------------------------------

_HF_DEFAULTS = {"tie_word_embeddings": False, "hidden_act": "silu", "rope_scaling": None,
                "attention_bias": False, "mlp_bias": False, "partial_rotary_factor": 1.0}
_HF_COMPARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
                "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias", "partial_rotary_factor")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or HFError naming the file and what it should hold."""
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HFError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e}); expected {what}") from None
    if not isinstance(got, dict):
        raise HFError(f"{path}: holds a {type(got).__name__}; expected {what} (a JSON object)")
    return got


def hf_format(directory: Path) -> tuple[str, dict[str, Any]]:
    """``(fmt, config.json)`` of a Hugging Face model directory in one of :data:`FORMATS`."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise HFError(f"{path} not found: expected a Hugging Face model directory (config.json + safetensors)")
    got = _read_json(path, "a Hugging Face model config")
    model_type = got.get("model_type")
    fmt = model_type if isinstance(model_type, str) and model_type in FORMATS else None
    if fmt is None:
        raise HFError(f"{path}: model_type = {got.get('model_type')!r}: expected 'llama' or 'phi3'")
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
    single, index = directory / WEIGHTS_FILE, directory / WEIGHTS_INDEX
    if index.is_file():
        weight_map = _read_json(index, "a safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise HFError(f"{index}: weight_map is {type(weight_map).__name__}; expected an object "
                          "{tensor name: shard file name}")
        where = {k: directory / f for k, f in weight_map.items()}
        files = sorted(set(where.values()))
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise HFError(f"{index} names shard files that do not exist: {', '.join(missing)}")
        return files, where
    if not single.is_file():
        raise HFError(f"{directory}: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX} found")
    with contextlib.ExitStack() as stack:
        return [single], {k: single for k in _open(stack, single).keys()}


def _open(stack: contextlib.ExitStack, path: Path) -> Any:
    """``safe_open(path)`` entered on ``stack``, or HFError naming the file that is not safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        return stack.enter_context(safe_open(str(path), framework="pt"))
    except (SafetensorError, OSError) as e:
        raise HFError(f"{path}: cannot be read as safetensors ({type(e).__name__}: {e}); expected the "
                      "model's weights written by transformers or pretrain.export") from None


def sha256_files(files: Sequence[Path]) -> dict[str, str]:
    """``{file name: sha256 hex digest}`` of ``files`` (the weight files :func:`load_hf` read)."""
    out = {}
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[Path(path).name] = h.hexdigest()
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
        sd.update(zip(ours, parts, strict=True))


def load_hf(directory: str | Path, config: GPTConfig) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """``(GPT state dict in fp32, weight files)`` from a Llama / Phi-3 directory written by the export or
    transformers: the inverse of :func:`to_hf_state_dict` (Phi-3's fused projections split back). Raises
    HFError listing every architecture difference, missing, unexpected or misshapen tensor."""
    import torch

    directory = Path(directory)
    problems = hf_config_differences(config, directory)
    if problems:
        raise HFError(f"{directory / CONFIG_FILE} does not match the model config:\n  " + "\n  ".join(problems))
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
        handles = {f: _open(stack, f) for f in files}
        _read(names, where, handles, ours_shapes, sd, problems)
    if problems:
        raise HFError(f"cannot load {directory} into the model:\n  " + "\n  ".join(problems))
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    return {k: v.contiguous() for k, v in sd.items()}, files
