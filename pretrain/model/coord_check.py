"""muP coordinate check: activation size against width, after a few training steps.

::

    python -m pretrain.model.coord_check --out coord_check/ [--widths 64,128,256,512,1024] [--steps 5]

For each parameterization (standard, muP) and width, builds the model (all
other sizes fixed: depth, heads, sequence, batch), trains it for ``steps``
AdamW updates at the same base LR on one fixed batch of random tokens through
the real :func:`~pretrain.model.param_groups.param_groups` and
``OptimizerConfig.build`` (so muP's per-group LR multipliers are the trainer's),
and records the RMS of every layer's output at every step. Under muP the
curves are flat in width; under the standard parameterization the hidden
activations and logits grow with width once training moves the weights
(Yang et al. 2021, Tensor Programs V, Figure 5).

Writes ``OUT/coord_check.json`` (all numbers) and ``OUT/coord_check.png``
(one panel per parameterization and recorded step; RMS against width, log-log).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from pretrain.model.config import D2Z_BASE_LR, GPTConfig, MuPConfig
from pretrain.model.param_groups import param_groups

PARAMETERIZATIONS = ("sp", "mup")


def base_config(width: int, parameterization: str, n_layers: int = 2, n_heads: int = 4, seq_len: int = 32,
                vocab_size: int = 256, base_width: int = 256) -> GPTConfig:
    """The coord-check model at ``width``: only d_model (and the default MLP size) vary.

    The head count is fixed, so the head size grows with width (exercising muP's
    1/d_head attention scale). The standard parameterization keeps GPTConfig's
    defaults (init std 0.02, residual projections / sqrt(2 L), 1/sqrt(d_head)).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization {parameterization!r}: expected one of {PARAMETERIZATIONS}")
    return GPTConfig(
        vocab_size=vocab_size, d_model=width, n_layers=n_layers, n_heads=n_heads, max_seq_len=seq_len,
        pos="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False,
        mup=MuPConfig(base_width=base_width) if parameterization == "mup" else None,
    )


def layer_names(n_layers: int) -> list[str]:
    names = ["embedding"]
    for i in range(n_layers):
        names += [f"block{i}.attn", f"block{i}.mlp", f"block{i}"]
    return names + ["logits"]


def _rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


def record_activations(config: GPTConfig, steps: int, lr: float, batch_size: int = 4, seed: int = 0,
                       weight_decay: float = 0.0) -> dict[str, list[float]]:
    """``{layer: [RMS at step 0, ..., RMS at step `steps`]}``: step ``t`` is the forward
    pass after ``t`` AdamW updates on one fixed batch (fp32, CPU or wherever torch defaults).

    ``embedding`` is the input of the first block (after the embedding multiplier),
    ``blockN.attn`` / ``blockN.mlp`` the branch outputs added to the residual stream,
    ``blockN`` the residual stream after block N, ``logits`` the model output.
    """
    from pretrain.optim import OptimizerConfig

    torch.manual_seed(seed)
    model = config.build().train()
    gen = torch.Generator().manual_seed(seed + 1)
    data = torch.randint(0, config.vocab_size, (batch_size, config.max_seq_len + 1), generator=gen)
    inputs, targets = data[:, :-1], data[:, 1:]
    optimizer = OptimizerConfig(lr=lr, weight_decay=weight_decay).build(param_groups(model, weight_decay))

    current: dict[str, float] = {}
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: current.__setitem__("embedding", _rms(args[0])))]
    for i, block in enumerate(model.blocks):
        hooks.append(block.attn.register_forward_hook(lambda m, a, out, i=i: current.__setitem__(f"block{i}.attn", _rms(out))))
        hooks.append(block.mlp.register_forward_hook(lambda m, a, out, i=i: current.__setitem__(f"block{i}.mlp", _rms(out))))
        hooks.append(block.register_forward_hook(lambda m, a, out, i=i: current.__setitem__(f"block{i}", _rms(out))))
    records: dict[str, list[float]] = {name: [] for name in layer_names(config.n_layers)}
    try:
        for step in range(steps + 1):
            current.clear()
            logits = model(inputs)
            current["logits"] = _rms(logits)
            for name, value in current.items():
                records[name].append(value)
            if step == steps:
                break
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for h in hooks:
            h.remove()
    return records


def coord_check(widths: Sequence[int] = (64, 128, 256, 512, 1024), steps: int = 5, lr: float = D2Z_BASE_LR,
                parameterizations: Sequence[str] = PARAMETERIZATIONS, seeds: int = 1, **config_kwargs) -> dict:
    """``{"widths", "steps", "lr", "results": {param: {width: {layer: [rms per step]}}}}``,
    the RMS averaged over ``seeds`` runs."""
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    for param in parameterizations:
        results[param] = {}
        for width in widths:
            config = base_config(width, param, **config_kwargs)
            runs = [record_activations(config, steps, lr, seed=s) for s in range(seeds)]
            results[param][width] = {name: [sum(r[name][t] for r in runs) / seeds for t in range(steps + 1)]
                                     for name in runs[0]}
    return {"widths": list(widths), "steps": steps, "lr": lr, "results": results}


def growth(result: dict, parameterization: str, layer: str, step: int | None = None) -> float:
    """RMS at the widest width over RMS at the narrowest, at ``step`` (default: the last)."""
    widths = result["widths"]
    by_width = result["results"][parameterization]
    t = result["steps"] if step is None else step
    return by_width[widths[-1]][layer][t] / by_width[widths[0]][layer][t]


def plot(result: dict, path: Path, steps_to_show: Sequence[int] | None = None) -> Path:
    """One row per parameterization, one column per step: RMS of each layer against width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(result["results"])
    steps_to_show = list(steps_to_show) if steps_to_show is not None else sorted({0, 1, result["steps"] // 2, result["steps"]})
    widths = result["widths"]
    fig, axes = plt.subplots(len(params), len(steps_to_show), figsize=(3.6 * len(steps_to_show), 3.2 * len(params)),
                             squeeze=False, sharey="row")
    for r, param in enumerate(params):
        layers = list(result["results"][param][widths[0]])
        cmap = plt.get_cmap("viridis")
        for c, t in enumerate(steps_to_show):
            ax = axes[r][c]
            for k, layer in enumerate(layers):
                ys = [result["results"][param][w][layer][t] for w in widths]
                style = dict(lw=2.2, color="red") if layer == "logits" else dict(lw=1.2, color=cmap(k / max(1, len(layers) - 1)))
                ax.plot(widths, ys, marker="o", ms=3, label=layer, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'muP' if param == 'mup' else 'standard'}: step {t}", fontsize=10)
            ax.set_xlabel("width (d_model)")
            if c == 0:
                ax.set_ylabel("activation RMS")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"coordinate check: AdamW lr {result['lr']:g}, {result['steps']} steps", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.model.coord_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="coord_check", help="output directory (coord_check.json, coord_check.png)")
    p.add_argument("--widths", default="64,128,256,512,1024", help="comma-separated d_model values")
    p.add_argument("--steps", type=int, default=5, help="AdamW updates (default 5)")
    p.add_argument("--lr", type=float, default=D2Z_BASE_LR, help=f"base LR (default {D2Z_BASE_LR}, D2Z Table 4)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--base-width", type=int, default=256, help="muP base width")
    p.add_argument("--seeds", type=int, default=1, help="runs averaged per point")
    p.add_argument("--parameterization", choices=("both", *PARAMETERIZATIONS), default="both")
    args = p.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    params = PARAMETERIZATIONS if args.parameterization == "both" else (args.parameterization,)
    result = coord_check(widths, args.steps, args.lr, params, args.seeds, n_layers=args.layers, n_heads=args.heads,
                         seq_len=args.seq_len, base_width=args.base_width)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coord_check.json").write_text(json.dumps(result, indent=1))
    png = plot(result, out / "coord_check.png")
    for param in params:
        print(f"{param:>4}: RMS growth {widths[0]} -> {widths[-1]} after {args.steps} steps: "
              f"logits x{growth(result, param, 'logits'):.2f}, "
              f"last block x{growth(result, param, f'block{args.layers - 1}'):.2f}")
    print(f"wrote {out / 'coord_check.json'} and {png}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
