"""Will it fit? The per-GPU memory, step time and checkpoint size of a run, before it is queued.

    python -m pretrain.plan --config configs/phi3_mini.yaml --gpus 8 --gpu A100-40GB [key=value ...]

``plan_memory(cfg, gpus, gpu)`` returns a :class:`MemoryPlan`: the bytes of each part on one GPU,
whether they fit (``fits``, ``problems()``), and when they do not, the part that overflows and the
settings that would make it fit, found by planning again with each change (a higher ZeRO stage,
activation checkpointing, a smaller micro-batch with more accumulation). It needs no data and
no GPU: ``seq_len`` comes from ``--seq-len``, ``data.seq_len``, the data's manifest when it is
readable, or else ``model.max_seq_len``.

The model (N parameters, W data-parallel GPUs, e bytes per parameter and activation element:
2 in bf16/fp16, 4 in fp32; a bytes per accumulated gradient element: 4 with
``data_types.grad_accum_dtype: fp32``, else e; k optimizer moments: 2 for AdamW). It follows what
DeepSpeed 0.19 allocates (``runtime/zero/stage_1_and_2.py``, ``stage3.py``, ``bf16_optimizer.py``):

* parameters: e*N; ZeRO-3: e*N/W.
* gradients: ZeRO-2 and 3 keep this rank's partition, a*N/W; at the step a gradient in another
  dtype than fp32 is copied to fp32 (+4*N/W), and ZeRO-1/2 in e=a flatten it first (+e*N/W, one
  parameter group at a time). ZeRO-1 keeps the whole gradient: e*N, or 4*N in its bf16 optimizer
  (bf16 with fp32 accumulation).
* optimizer states: the fp32 master weights and the moments, (4 + 4k)*N/W; an unfused AdamW (on a
  CPU) also makes two temporaries of the largest parameter group at the step.
* ZeRO-3 gathers one module at a time: its parameters and gradient, 2*e*(largest module's
  parameters), as DeepSpeed's ``estimate_zero3_model_states_mem_needs`` counts them.
* activations per layer and token, in bytes, following Korthikanti et al. 2022 ("Reducing
  activation recomputation in large transformer models", section 4.1) for this model's code
  (``pretrain/model/gpt.py``) with SDPA/flash attention (no s*s scores)::

      16*D           two RMS/LayerNorms, each saving its fp32 input and fp32 normalized output
      + 2*e*D        the two norm outputs the next matmuls save
      + 4*e*D + 4*H  q, k, v (after RoPE, GQA repeated) and the attention output; fp32 log-sum-exp
      + 4*e*F        SwiGLU: w1 and w3 outputs, silu(w1 x), their product (GELU: 2*e*F)
      (+ 2*D bytes of dropout masks when dropout > 0; + 16*D with qk_norm)

  For a Llama-like block (F = 8/3 D) in bf16 this is ~49*s*b*h bytes, against Korthikanti's
  34*s*b*h for a GPT block (fp16 norms, GELU 4h): the norms here compute in fp32. Without
  checkpointing every layer's activations are live at the start of the backward pass: L times
  that. With activation checkpointing (``torch.utils.checkpoint`` per block) each layer keeps
  only its input, e*D, and one layer's full activations are live again while it is recomputed:
  L*e*D + (one layer). ALiBi adds its shared bias, e*H*s*s.
* logits and loss: the fp32 log-probabilities saved by the cross-entropy and, at the start of the
  backward pass, their gradient and the gradient of the logits: 12*V bytes per token (+8*V with
  the z-loss).
* communication buffers: ZeRO-1/2's gradient buckets, 1 or 2 (``overlap_comm``) x
  ``reduce_bucket_size`` x e, and a copy of a bucket in ``communication_data_type`` when that
  differs; ZeRO-3's bucket (in the communication dtype) and its parameter prefetch,
  ``stage3_prefetch_bucket_size`` x e, at most ``stage3_max_live_parameters``. The all-gather of
  the updated weights writes in place (``all_gather_into_tensor``): ``allgather_bucket_size``
  costs nothing extra there.
* margin: the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers (1.5 GiB, outside the
  allocator), and 10% of the allocated peak for the caching allocator's fragmentation.

The backward pass (activations, loss, buckets) and the optimizer step (the fp32 copies and
temporaries) do not overlap: the peak is the resident model states plus the larger of the two.
Measured on a CPU (fp32, a world of one), the plan's peak is within 25% of the process's peak
resident-memory growth (``tests/test_plan.py``).

Time: ``step_s = tokens per update * model FLOPs per token (GPTConfig.flops_per_token)
/ (W * peak * mfu)``, times 4/3 with activation checkpointing (the recomputed forward pass),
at ``--mfu`` (default 0.40) of the dense bf16 peak (``pretrain.hardware.GPU_PEAK_BF16``).
Checkpoint on disk: the weights (e*N) plus the fp32 master weights and moments ((4 + 4k)*N),
each kept checkpoint (``checkpoint.keep_last``) once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 2**30
DEFAULT_MFU = 0.40
FRAGMENTATION = 0.10  # of the allocated peak (PyTorch's caching allocator)
CUDA_CONTEXT = int(1.5 * GiB)  # context + cuBLAS/cuDNN workspaces + NCCL buffers, outside the allocator
DS_DEFAULTS = {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7,
               "stage3_max_live_parameters": 1e9, "overlap_comm": None, "contiguous_gradients": True}
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


class PlanError(ValueError):
    """A plan that cannot be made: the message names the setting and what was expected."""


@dataclass(frozen=True)
class Device:
    name: str
    memory: int  # bytes (a GPU's total_memory as torch.cuda reports it)
    capability: tuple[int, int] = (0, 0)
    peak_name: str = ""  # the name pretrain.hardware.gpu_peak_flops knows it by
    cuda: bool = True

    @property
    def peak_flops(self) -> float | None:
        from .hardware import gpu_peak_flops

        return gpu_peak_flops(self.peak_name) if self.cuda else None


GPUS = {
    "H100-80GB": Device("H100-80GB", int(79.1 * GiB), (9, 0), "H100"),
    "H200": Device("H200", int(139.8 * GiB), (9, 0), "H200"),
    "A100-40GB": Device("A100-40GB", int(39.4 * GiB), (8, 0), "A100"),
    "A100-80GB": Device("A100-80GB", int(79.1 * GiB), (8, 0), "A100"),
}


def cpu_device() -> Device:
    """This machine's CPU as the 'device' (RAM as its memory): for checking the plan against a CPU run."""
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Device("cpu", int(memory), cuda=False)


def device_named(name: str) -> Device:
    if name == "cpu":
        return cpu_device()
    if name not in GPUS:
        raise PlanError(f"--gpu {name!r}: expected one of {', '.join(GPUS)} (or cpu)")
    return GPUS[name]


@dataclass
class Part:
    name: str
    bytes: float
    how: str  # the formula with its numbers
    phase: str  # "resident" (all the time), one of PHASES, "reduce+step", or "margin"

    def live_in(self, phase: str) -> bool:
        return self.phase == "resident" or self.phase == phase or (self.phase == "reduce+step" and phase in ("reduce", "step"))


# The three moments a step's memory peaks: the start of the backward pass (every activation saved, the loss's
# gradients), the end of the backward pass (the gradient partition filled, the buckets reducing), the optimizer step.
PHASES = {"backward": "start of backward", "reduce": "gradient reduction", "step": "optimizer step"}


@dataclass
class DSSettings:
    """What the plan reads from the DeepSpeed JSON."""

    stage: int
    overlap_comm: bool
    contiguous_gradients: bool
    reduce_bucket_size: float
    allgather_bucket_size: float
    prefetch_bucket_size: float
    max_live_parameters: float
    grad_accum_dtype: str | None  # None: the model's dtype
    communication_data_type: str | None  # None: the model's dtype
    path: str = ""

    @classmethod
    def from_dict(cls, ds: dict, path: str = "<ds config>") -> DSSettings:
        if not isinstance(ds, dict):
            raise PlanError(f"{path}: expected a JSON object")
        zero = ds.get("zero_optimization") or {}
        if not isinstance(zero, dict):
            raise PlanError(f"{path}: zero_optimization: expected an object")
        stage = zero.get("stage", 0)
        if stage not in (1, 2, 3):
            raise PlanError(f"{path}: zero_optimization.stage = {stage!r}: expected 1, 2 or 3 (the plan covers ZeRO)")
        values = {}
        for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                    "stage3_max_live_parameters"):
            v = zero.get(key, DS_DEFAULTS[key])
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise PlanError(f"{path}: zero_optimization.{key} = {v!r}: expected a finite number of elements >= 0")
            values[key] = float(v)
        accum = (ds.get("data_types") or {}).get("grad_accum_dtype")
        comm = ds.get("communication_data_type")
        for key, v in (("data_types.grad_accum_dtype", accum), ("communication_data_type", comm)):
            if v is not None and v not in DTYPE_BYTES:
                raise PlanError(f"{path}: {key} = {v!r}: expected one of fp32, bf16, fp16")
        overlap = zero.get("overlap_comm")
        return cls(stage=stage, overlap_comm=(stage == 3) if overlap is None else bool(overlap),
                   contiguous_gradients=bool(zero.get("contiguous_gradients", True)),
                   reduce_bucket_size=values["reduce_bucket_size"], allgather_bucket_size=values["allgather_bucket_size"],
                   prefetch_bucket_size=values["stage3_prefetch_bucket_size"],
                   max_live_parameters=values["stage3_max_live_parameters"], grad_accum_dtype=accum,
                   communication_data_type=comm, path=path)


@dataclass
class Layout:
    """One set of choices the plan is made for (the suggestions vary these)."""

    stage: int
    checkpointing: bool
    micro_batch: int
    grad_accum: int | None
    ds_path: str

    def changes_from(self, other: Layout) -> list[str]:
        out = []
        if self.stage != other.stage:
            out.append(f"deepspeed.config={self.ds_path} (ZeRO-{self.stage})")
        if self.checkpointing != other.checkpointing:
            out.append(f"model.activation_checkpointing={str(self.checkpointing).lower()}")
        if self.micro_batch != other.micro_batch:
            accum = f" (grad_accum {self.grad_accum})" if self.grad_accum else ""
            out.append(f"train.micro_batch_size={self.micro_batch}{accum}")
        return out


@dataclass
class MemoryPlan:
    device: Device
    gpus: int
    precision: str
    model_name: str
    n_params: int
    seq_len: int
    seq_len_from: str
    layout: Layout
    ds: DSSettings
    parts: list[Part]
    tokens_per_update: int | None = None
    flops_per_token: float = 0.0
    mfu: float = DEFAULT_MFU
    step_s: float | None = None
    tokens_per_s: float | None = None
    max_steps: int | None = None
    checkpoint_bytes: float = 0.0
    keep_last: int = 1
    config_problems: list[str] = field(default_factory=list)
    suggestions: list[tuple[list[str], MemoryPlan]] = field(default_factory=list)

    # -- totals -----------------------------------------------------------------------------
    def _sum(self, phase: str) -> float:
        return sum(p.bytes for p in self.parts if p.live_in(phase))

    def phase_bytes(self) -> dict[str, float]:
        return {ph: self._sum(ph) for ph in PHASES}

    @property
    def model_states(self) -> float:
        """Parameters, gradients (with the step's fp32 copies), master weights and moments, ZeRO-3's
        gathered module: what DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` count."""
        names = ("parameters", "gradients", "fp32 gradient at the step", "optimizer states", "gathered module")
        return sum(p.bytes for p in self.parts if p.name in names)

    @property
    def allocated_peak(self) -> float:
        """The peak of allocated memory: the largest of the three phases (resident parts are in each)."""
        return max(self.phase_bytes().values())

    @property
    def peak_phase_key(self) -> str:
        sums = self.phase_bytes()
        return max(sums, key=sums.get)

    @property
    def peak_phase(self) -> str:
        return PHASES[self.peak_phase_key]

    @property
    def total(self) -> float:
        return self.allocated_peak + sum(p.bytes for p in self.parts if p.phase == "margin")

    @property
    def fits(self) -> bool:
        return self.total <= self.device.memory and not self.config_problems

    def largest_part(self) -> Part:
        sums = self.phase_bytes()
        phase = max(sums, key=sums.get)
        return max((p for p in self.parts if p.live_in(phase)), key=lambda p: p.bytes)

    def problems(self) -> list[str]:
        out = list(self.config_problems)
        if self.total > self.device.memory:
            big = self.largest_part()
            fix = "; ".join(f"{', '.join(c)} -> {p.total / GiB:.1f} GiB" for c, p in self.suggestions[:3])
            out.append(
                f"does not fit: {self.total / GiB:.1f} GiB per GPU > {self.device.memory / GiB:.1f} GiB on one "
                f"{self.device.name} ({(self.total - self.device.memory) / GiB:.1f} GiB over); the largest part is "
                f"{big.name}, {big.bytes / GiB:.1f} GiB ({big.how}). "
                + (f"It fits with: {fix}" if fix else "No single change of ZeRO stage, activation checkpointing or "
                   "micro-batch makes it fit: more GPUs, a smaller model or a shorter sequence"))
        return out

    # -- output -----------------------------------------------------------------------------
    def text(self) -> str:
        L = self.layout
        head = (f"memory plan: {self.model_name}, {self.n_params / 1e9:.3g}B parameters, {self.precision}, ZeRO-{L.stage} "
                f"({self.ds.path}), activation checkpointing {'on' if L.checkpointing else 'off'}, seq {self.seq_len} "
                f"({self.seq_len_from}) x micro-batch {L.micro_batch}"
                + (f" x accum {L.grad_accum}" if L.grad_accum else "")
                + f", on {self.gpus} x {self.device.name} ({self.device.memory / GiB:.1f} GiB each)")
        lines = [head, f"  {'part':30} {'GiB':>8}  how"]
        titles = {"resident": "resident", **PHASES, "reduce+step": "gradient reduction and optimizer step",
                  "margin": "margin"}
        for phase, title in titles.items():
            parts = [p for p in self.parts if p.phase == phase]
            if parts:
                lines.append(f"  -- {title}")
                lines += [f"  {p.name:30} {p.bytes / GiB:8.2f}  {p.how}" for p in parts]
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        sums = ", ".join(f"{PHASES[k]} {v / GiB:.2f}" for k, v in self.phase_bytes().items())
        lines.append(f"  {'peak (' + self.peak_phase + ')':30} {self.allocated_peak / GiB:8.2f}  resident + the phase's parts "
                     f"({sums})")
        lines.append(f"  {'total per GPU':30} {self.total / GiB:8.2f}  of {self.device.memory / GiB:.1f} GiB: {verdict}"
                     + (f" ({(self.device.memory - self.total) / GiB:.1f} GiB free)" if self.fits else ""))
        if self.step_s is not None:
            run = ""
            if self.max_steps:
                run = f"; {self.max_steps} updates ~ {self.max_steps * self.step_s / 3600:.1f} h"
            lines.append(f"  time: {self.tokens_per_update:,} tokens/update x {self.flops_per_token / 1e9:.3g} GFLOP/token "
                         f"at MFU {self.mfu:.0%} of {self.device.peak_flops / 1e12:.0f} TFLOP/s x {self.gpus}"
                         f"{' (x4/3 recompute)' if L.checkpointing else ''}: {self.step_s:.2f} s/update, "
                         f"{self.tokens_per_s:,.0f} tokens/s{run}")
        lines.append(f"  checkpoint: {self.checkpoint_bytes / GiB:.1f} GiB each on disk, "
                     f"{self.checkpoint_bytes * self.keep_last / GiB:.1f} GiB for keep_last {self.keep_last}")
        for problem in self.problems():
            lines.append(f"  problem: {problem}")
        if self.fits and self.suggestions:
            lines.append("  alternatives: " + "; ".join(f"{', '.join(c)} -> {p.total / GiB:.1f} GiB" for c, p in self.suggestions))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device.name, "gpus": self.gpus, "precision": self.precision, "n_params": self.n_params,
                "seq_len": self.seq_len, "stage": self.layout.stage, "activation_checkpointing": self.layout.checkpointing,
                "micro_batch": self.layout.micro_batch, "grad_accum": self.layout.grad_accum,
                "parts": [dataclasses.asdict(p) for p in self.parts], "allocated_peak": self.allocated_peak,
                "total": self.total, "memory": self.device.memory, "fits": self.fits, "step_s": self.step_s,
                "tokens_per_s": self.tokens_per_s, "checkpoint_bytes": self.checkpoint_bytes,
                "problems": self.problems(),
                "suggestions": [{"changes": c, "total": p.total} for c, p in self.suggestions]}


# -- the arithmetic --------------------------------------------------------------------------

def activation_bytes_per_token_layer(m, e: int, cuda: bool = True, seq_len: int = 0) -> float:
    """Bytes one layer saves for backward per token (the formula in the module docstring)."""
    D, H, F = m.d_model, m.n_heads, m.ffn_dim
    per = 16 * D + 2 * e * D + 4 * e * D + 4 * H + (4 if m.mlp == "swiglu" else 2) * e * F
    if m.dropout > 0:
        per += 2 * D
    if m.qk_norm:
        per += 16 * D
    if m.pos == "alibi" and not cuda:  # the math SDPA backend on a CPU: scores and probabilities
        per += 2 * e * H * seq_len
    return per


def largest_module_params(m) -> int:
    """Parameters of the largest module DeepSpeed gathers at once under ZeRO-3 (``model_to_params``)."""
    D, F, V = m.d_model, m.ffn_dim, m.vocab_size
    return max(V * D, D * F, m.n_heads * m.head_dim * D)


def largest_group_params(m) -> int:
    """Parameters of the largest optimizer group (pretrain.model.param_groups): hidden matrices, embedding, lm_head."""
    D = m.d_model
    hidden = m.num_params(include_embeddings=False) - (2 * m.n_layers + 1) * D
    return max(hidden, m.vocab_size * D)


def _parts(m, gpus: int, device: Device, e: int, ds: DSSettings, L: Layout, seq: int, k: int) -> list[Part]:
    N, W = m.num_params(), gpus
    a = DTYPE_BYTES[ds.grad_accum_dtype] if ds.grad_accum_dtype else e
    comm = DTYPE_BYTES[ds.communication_data_type] if ds.communication_data_type else e
    G = largest_group_params(m)
    bf16_optimizer = L.stage == 1 and e == 2 and a == 4  # DeepSpeed's BF16_Optimizer (ZeRO-1, fp32 accumulation)
    parts = []
    add = lambda name, b, how, phase: parts.append(Part(name, float(b), how, phase))  # noqa: E731

    if L.stage == 3:
        add("parameters", e * N / W, f"{e} x N / {W}", "resident")
    else:
        add("parameters", e * N, f"{e} x N", "resident")
    if L.stage == 1:
        g = 4 if bf16_optimizer else e
        keep = bf16_optimizer or L.grad_accum is None or L.grad_accum > 1
        add("gradients", g * N, f"{g} x N, whole" + (" (fp32, DeepSpeed's bf16 optimizer)" if bf16_optimizer else ""),
            "resident" if keep else "reduce+step")
    else:
        # ZeRO-3's partition buffer is allocated once; ZeRO-2's fills during the backward pass and is freed by the step
        # (kept across the micro-batches of an accumulation).
        keep = L.stage == 3 or L.grad_accum is None or L.grad_accum > 1
        add("gradients", a * N / W, f"{a} x N / {W}, this rank's partition", "resident" if keep else "reduce+step")
    # The step: ZeRO-1/2 flatten each group's gradient partition (unless it is already one flat fp32 buffer)
    # and cast it to fp32; ZeRO-3 casts a non-fp32 partition to fp32. (Counted for all groups at once.)
    flat_fp32 = bf16_optimizer or (L.stage == 2 and a == 4 and e != 4)
    part_bytes = a if L.stage == 3 else e
    fp32_copy = 0.0 if flat_fp32 or part_bytes == 4 else 4 * N / W
    add("fp32 gradient at the step", fp32_copy,
        f"4 x N / {W}: the {part_bytes}-byte partition in fp32" if fp32_copy else "none (the partition is fp32)", "step")
    if L.stage != 3 and not flat_fp32:
        add("flattened gradient at the step", e * N / W, f"{e} x N / {W}: the partition flattened", "step")
    add("optimizer states", (4 + 4 * k) * N / W, f"(4 + 4 x {k}) x N / {W}: fp32 master weights + {k} moment(s)",
        "resident")
    if not device.cuda and k:
        add("optimizer temporaries", 8 * G / W, f"8 x {G / 1e6:.3g}M / {W}: unfused AdamW, largest group", "step")
    if L.stage == 3:
        big = largest_module_params(m)
        add("gathered module", 2 * e * big, f"2 x {e} x {big / 1e6:.3g}M: the largest module's weights + gradient",
            "backward")

    tokens = L.micro_batch * seq
    per_layer = activation_bytes_per_token_layer(m, e, device.cuda, seq)
    final = (8 + e) * m.d_model
    if L.checkpointing:
        act = tokens * (m.n_layers * e * m.d_model + per_layer + final)
        how = (f"{tokens} tokens x ({m.n_layers} x {e} x {m.d_model} checkpoints + one layer {per_layer / m.d_model:.1f} "
               f"x D recomputed)")
    else:
        act = tokens * (m.n_layers * per_layer + final)
        how = f"{tokens} tokens x {m.n_layers} layers x {per_layer / m.d_model:.1f} x D bytes"
    if m.pos == "alibi":
        act += e * m.n_heads * seq * seq
        how += f" + ALiBi bias {e} x H x s^2"
    add("activations", act, how, "backward")
    per_v = 12 + (8 if m.z_loss else 0)
    add("logits and loss", tokens * m.vocab_size * per_v, f"{tokens} tokens x V {m.vocab_size} x {per_v} bytes", "backward")

    # Communication buffers. On a CPU an untouched buffer costs nothing: count what the gradients fill.
    def buf(elements: float) -> float:
        return elements if device.cuda else min(elements, N)

    if L.stage in (1, 2) and not bf16_optimizer:
        n = 2 if ds.overlap_comm else 1
        b = buf(n * ds.reduce_bucket_size) * e if ds.contiguous_gradients else 0.0
        add("gradient buckets", b, f"{n} x reduce_bucket_size {ds.reduce_bucket_size:.3g} x {e}", "reduce")
    elif bf16_optimizer:
        add("gradient buckets", buf(ds.reduce_bucket_size) * 4, f"reduce_bucket_size {ds.reduce_bucket_size:.3g} x 4 (flattened fp32)",
            "reduce")
    else:
        add("gradient buckets", buf(ds.reduce_bucket_size) * comm,
            f"reduce_bucket_size {ds.reduce_bucket_size:.3g} x {comm}", "reduce")
        pre = min(ds.prefetch_bucket_size, ds.max_live_parameters, N)
        add("parameter prefetch", pre * e, f"stage3_prefetch_bucket_size {ds.prefetch_bucket_size:.3g} x {e}", "backward")
    grad_bytes = 4 if bf16_optimizer else e
    if L.stage != 3 and comm != grad_bytes:
        add("bucket in communication dtype", buf(ds.reduce_bucket_size) * comm,
            f"reduce_bucket_size x {comm} (communication_data_type)", "reduce")
    if L.stage != 3:
        big = max(m.vocab_size * m.d_model, m.d_model * m.ffn_dim)
        add("largest parameter's gradient", e * big, f"{e} x {big / 1e6:.3g}M before it enters a bucket", "backward")
    if device.cuda:
        peak = max(sum(p.bytes for p in parts if p.live_in(ph)) for ph in PHASES)
        add("fragmentation", FRAGMENTATION * peak, f"{FRAGMENTATION:.0%} of the allocated peak", "margin")
        add("CUDA context", CUDA_CONTEXT, "context, cuBLAS/cuDNN workspaces, NCCL buffers", "margin")
    return parts


def _ds_path_for_stage(stage: int, current: str) -> str:
    """The shipped JSON of ``stage`` (ds_configs/zero{stage}.json), beside the current one."""
    return str(Path(current).parent / f"zero{stage}.json")


def _read_ds(path: str) -> DSSettings:
    p = Path(path)
    candidates = [p] if p.is_absolute() else [p, Path(__file__).resolve().parents[1] / p]
    for c in candidates:
        if c.is_file():
            try:
                return DSSettings.from_dict(json.loads(c.read_text()), path)
            except json.JSONDecodeError as e:
                raise PlanError(f"deepspeed.config = {path!r}: not readable JSON ({e})") from None
    raise PlanError(f"deepspeed.config = {path!r}: expected an existing DeepSpeed JSON file (not found)")


def _data_manifest(cfg) -> dict | None:
    """The data's manifest when the config's data directory is readable, else None (the plan needs no data)."""
    try:
        data = cfg.data.build()
        if data.check_files():
            return None
        return data.manifest()
    except Exception:  # noqa: BLE001 - missing or unreadable data: fall back to the config's values
        return None


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{what} = {value!r}: expected an integer >= 1")
    return value


def plan_memory(cfg, gpus: int, gpu: str, *, seq_len: int | None = None, precision: str | None = None,
                mfu: float = DEFAULT_MFU, suggest: bool = True, _layout: Layout | None = None) -> MemoryPlan:
    """The per-GPU memory, time and checkpoint plan of ``cfg`` (a loaded, unresolved RunConfig) on ``gpus`` x ``gpu``.

    ``gpu``: a key of :data:`GPUS`, or ``cpu`` (this machine's RAM; no time estimate). ``seq_len`` and
    ``precision`` override the config's. Raises :class:`PlanError` for a plan that cannot be made.
    """
    from .hardware import Hardware, choose_precision

    gpus = _positive_int(gpus, "--gpus")
    if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not math.isfinite(mfu) or not 0 < mfu <= 1:
        raise PlanError(f"--mfu = {mfu!r}: expected a finite fraction in (0, 1]")
    device = device_named(gpu)
    m = dataclasses.replace(cfg.model)
    manifest = None
    if m.vocab_size is None or (seq_len is None and cfg.data.seq_len is None):
        manifest = _data_manifest(cfg)
    if m.vocab_size is None:
        if manifest is None:
            raise PlanError(f"model.vocab_size is not set and the data ({cfg.data.path}) is not readable: expected "
                            "model.vocab_size=N (the tokenizer's vocabulary size)")
        m.vocab_size = int(manifest["vocab_size"])
    if seq_len is not None:
        seq, seq_from = _positive_int(seq_len, "--seq-len"), "--seq-len"
    elif cfg.data.seq_len is not None:
        seq, seq_from = cfg.data.seq_len, "data.seq_len"
    elif manifest is not None:
        seq, seq_from = int(manifest["seq_len"]), f"{cfg.data.path}/manifest.json"
    else:
        seq, seq_from = m.max_seq_len, "model.max_seq_len; no data.seq_len or readable data"
    if seq > m.max_seq_len:
        raise PlanError(f"seq_len = {seq} ({seq_from}): expected at most model.max_seq_len = {m.max_seq_len}")
    bad = m.validate()
    if bad:
        raise PlanError("model: " + "; ".join(f"{k}: expected {v}" for k, v in bad))
    asked = precision or cfg.train.precision
    if device.cuda:
        hw = Hardware(device="cuda", gpu_name=device.name, gpu_capability=device.capability)
    else:
        from .hardware import detect

        hw = detect()
    try:
        prec = choose_precision(asked, hw).precision
    except ValueError as e:
        raise PlanError(f"train.precision = {asked!r}: {e}") from None
    e = 4 if prec == "fp32" else 2

    ds_path = cfg.deepspeed.config
    if _layout is None:
        ds = _read_ds(ds_path)
        layout = Layout(ds.stage, bool(m.activation_checkpointing), cfg.train.micro_batch_size, cfg.train.grad_accum,
                        ds_path)
    else:
        layout = _layout
        ds = _read_ds(layout.ds_path)
    m.activation_checkpointing = layout.checkpointing

    t = cfg.train
    problems: list[str] = []
    global_batch = t.global_batch_size
    if global_batch is None and t.global_batch_tokens is not None:
        global_batch = t.global_batch_tokens // seq if t.global_batch_tokens % seq == 0 else None
        if global_batch is None:
            problems.append(f"train.global_batch_tokens = {t.global_batch_tokens}: expected a multiple of seq_len {seq}")
    accum = layout.grad_accum
    if global_batch is not None and _layout is None:
        per = layout.micro_batch * gpus
        if global_batch % per:
            problems.append(f"train.global_batch_size = {global_batch}: expected a multiple of train.micro_batch_size "
                            f"({layout.micro_batch}) x gpus ({gpus}) = {per}")
        elif accum is not None and accum * per != global_batch:
            problems.append(f"train.grad_accum = {accum}: expected global_batch_size / (micro x gpus) = {global_batch // per}")
        else:
            accum = global_batch // per
        layout = dataclasses.replace(layout, grad_accum=accum)

    k = 2 if cfg.optimizer.name == "adamw" else (1 if cfg.optimizer.momentum else 0)
    plan = MemoryPlan(device=device, gpus=gpus, precision=prec, model_name=_model_name(cfg), n_params=m.num_params(),
                      seq_len=seq, seq_len_from=seq_from, layout=layout, ds=ds,
                      parts=_parts(m, gpus, device, e, ds, layout, seq, k), mfu=float(mfu),
                      keep_last=max(1, cfg.checkpoint.keep_last or 1), config_problems=problems)
    plan.flops_per_token = m.flops_per_token(seq)
    plan.checkpoint_bytes = (e + 4 + 4 * k) * plan.n_params
    if global_batch is not None:
        plan.tokens_per_update = global_batch * seq
        budget = [t.max_steps] if t.max_steps else []
        if t.max_tokens:
            budget.append(math.ceil(t.max_tokens / plan.tokens_per_update))
        if t.tokens_per_param:
            budget.append(math.ceil(t.tokens_per_param * plan.n_params / plan.tokens_per_update))
        plan.max_steps = max(budget) if budget else None
        peak = device.peak_flops
        if peak:
            recompute = 4 / 3 if layout.checkpointing else 1.0
            plan.step_s = plan.tokens_per_update * plan.flops_per_token * recompute / (gpus * peak * mfu)
            plan.tokens_per_s = plan.tokens_per_update / plan.step_s
    if suggest and _layout is None and plan.total > device.memory:
        plan.suggestions = _suggestions(cfg, gpus, gpu, seq, precision, mfu, plan, global_batch)
    return plan


def _model_name(cfg) -> str:
    return cfg.name


def _suggestions(cfg, gpus, gpu, seq, precision, mfu, base: MemoryPlan, global_batch) -> list[tuple[list[str], MemoryPlan]]:
    """Plans with a higher ZeRO stage, activation checkpointing and/or a smaller micro-batch that fit, fewest changes first."""
    L = base.layout
    micros = [L.micro_batch]
    mb = L.micro_batch
    while mb > 1:
        mb //= 2
        if global_batch is None or global_batch % (mb * gpus) == 0:
            micros.append(mb)
    found = []
    for stage in range(L.stage, 4):
        ds_path = L.ds_path if stage == L.stage else _ds_path_for_stage(stage, L.ds_path)
        try:
            _read_ds(ds_path)
        except PlanError:
            continue
        for ckpt in sorted({L.checkpointing, True}):
            for micro in micros:
                accum = global_batch // (micro * gpus) if global_batch else None
                cand = Layout(stage, ckpt, micro, accum, ds_path)
                changes = cand.changes_from(L)
                if not changes:
                    continue
                p = plan_memory(cfg, gpus, gpu, seq_len=seq, precision=precision, mfu=mfu, suggest=False, _layout=cand)
                if p.total <= p.device.memory:
                    # fewest changes; then the fastest (no recompute, bigger micro-batches), then the lower stage
                    found.append(((len(changes), ckpt and not L.checkpointing, -micro, stage), changes, p))
    found.sort(key=lambda x: x[0])
    return [(c, p) for _, c, p in found[:3]]


# -- the command line -------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pretrain.plan",
        description="Per-GPU memory, step time and checkpoint size of a run before it is queued. "
                    "Override any config key with dotted KEY=VALUE arguments.")
    p.add_argument("--config", required=True, help="run YAML (see configs/)")
    p.add_argument("--gpus", type=int, required=True, help="data-parallel GPUs (ranks) in the job")
    p.add_argument("--gpu", required=True, help=f"one of {', '.join(GPUS)} (or cpu: this machine's RAM)")
    p.add_argument("--seq-len", type=int, default=None, help="default: data.seq_len, the data's manifest, model.max_seq_len")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default=None,
                   help="default: train.precision (auto: bf16 on these GPUs)")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilisation assumed for the time estimate")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (overrides are KEY=VALUE)")
    args.overrides = rest
    if args.gpus < 1:
        p.error(f"--gpus {args.gpus}: expected an integer >= 1")
    if args.seq_len is not None and args.seq_len < 1:
        p.error(f"--seq-len {args.seq_len}: expected an integer >= 1")
    if not math.isfinite(args.mfu) or not 0 < args.mfu <= 1:
        p.error(f"--mfu {args.mfu}: expected a finite fraction in (0, 1]")
    if args.gpu != "cpu" and args.gpu not in GPUS:
        p.error(f"--gpu {args.gpu!r}: expected one of {', '.join(GPUS)} (or cpu)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """0: it fits; 1: it does not (the problems say why and what would fit); 2: bad arguments or config."""
    from .config_loader import ConfigError
    from .run_config import load_run_config

    args = parse_args(argv)
    try:
        cfg = load_run_config(args.config, args.overrides)
        plan = plan_memory(cfg, args.gpus, args.gpu, seq_len=args.seq_len, precision=args.precision, mfu=args.mfu)
    except (ConfigError, PlanError, FileNotFoundError) as e:
        print(f"plan: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=1) if args.json else plan.text())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
