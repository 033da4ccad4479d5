"""Benchmarks with EleutherAI's lm-evaluation-harness, run on our own GPT (no export needed).

    python -m pretrain.lm_eval CHECKPOINT --tasks hellaswag,arc_easy [--include-path DIR] [--num-fewshot K]
        [--batch-size N] [--limit N] [--device cpu|cuda] [--dtype float32|bfloat16] [--output FILE]

CHECKPOINT is a checkpoint directory (``.../checkpoints/step_N``, or a merge's ``OUT/step_N``), a
directory of checkpoints (``.../checkpoints``, a merge's ``OUT``: its newest sound one), or a run
directory (its newest sound checkpoint). The model config comes from the checkpoint's ``config.yaml``,
the tokenizer from the run's ``data.tokenizer``, else the data manifest's (``--tokenizer`` overrides).
Any model the trainer builds works, muP and ALiBi included (``pretrain.export`` covers only what Llama
and Phi-3 can express).

The model is wrapped as an lm-eval ``LM`` (:func:`lm_class`): ``loglikelihood`` (multiple choice),
``loglikelihood_rolling`` (perplexity; windows of the model's ``max_seq_len`` as lm-eval's HF model
makes them) and ``generate_until`` (greedy, no KV cache). Texts are encoded as ``data_prep`` encoded
the training data (no BOS/EOS added); the tokenizer's EOS, which ends every training document,
stands before an empty context and is where generation stops. Requests are sorted by length and run
``--batch-size`` at a time, right-padded (the model is causal: padding after a row changes nothing in it).

Needs ``pip install -e '.[eval]'`` (lm-eval). Exit codes: 2 bad arguments, config or task, 3 a checkpoint
that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# lm_eval itself is imported where it is used (main, lm_class, the rolling windows): importing it
# costs ~0.3 s, and `import pretrain.lm_eval` must stay cheap.


# ---- loading -------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | Path, verify: bool = True):
    """``(CheckpointDir, tag)`` for a checkpoint directory, a directory of checkpoints or a run directory."""
    from .checkpoint import MARKER, TAG_RE, CheckpointDir, CheckpointError

    path = Path(path)
    if TAG_RE.match(path.resolve().name) or (path / MARKER).exists():
        ckpts, tag = CheckpointDir.open(path)
        if verify:
            ckpts.check(tag)
        return ckpts, tag
    if (path / "config.yaml").is_file():
        from .rundir import RunDir

        ckpts = RunDir(path).checkpoints(verify="hash" if verify else "none")
    elif path.is_dir():
        ckpts = CheckpointDir(path, "hash" if verify else "none")
    else:
        raise CheckpointError(f"{path}: no such directory")
    tag = ckpts.newest_sound()
    if tag is None:
        raise CheckpointError(f"{path}: no complete checkpoint in {ckpts.root}")
    return ckpts, tag


def load(checkpoint: str | Path, device: str = "cpu", dtype: str = "float32", tokenizer: str | None = None,
         verify: bool = True):
    """``(model on device in eval mode, tokenizer, info dict)`` of ``checkpoint`` (see the module docstring)."""
    import torch

    from data_prep.tokenizer import load_tokenizer

    from .rundir import RunDir

    ckpts, tag = resolve_checkpoint(checkpoint, verify)
    path = ckpts.path(tag)
    run = RunDir(path)  # a checkpoint holds its run's config.yaml
    config = run.model_config()
    tok_path = Path(tokenizer) if tokenizer else run.tokenizer_path()
    if tok_path is None:
        raise ValueError(f"{path / 'config.yaml'}: no data.tokenizer and no tokenizer in the data manifest; "
                         f"pass --tokenizer FILE")
    tok = load_tokenizer(tok_path)
    if tok.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer {tok_path}: {tok.vocab_size} ids, more than the model's vocab_size {config.vocab_size}")
    model = ckpts.model(tag, config).to(device=device, dtype=getattr(torch, dtype))
    info = {"checkpoint": str(path), "step": ckpts.marker(tag).get("step"), "tokenizer": str(tok_path),
            "max_seq_len": config.max_seq_len, "pos": config.pos, "mup": config.mup is not None}
    return model, tok, info


# ---- scoring on token ids (no lm_eval needed) ----------------------------------------------------


class NativeScorer:
    """Log-likelihoods and greedy generation of our GPT on token ids and texts, batched.

    ``max_length`` (default: the model's ``max_seq_len``) bounds every forward: contexts are cut
    on the left. ``prefix_id`` (default: the tokenizer's EOS, else 0) is the token an empty
    context stands for.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
                 prefix_id: int | None = None):
        import torch

        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = max(1, int(batch_size))
        limit = model.config.max_seq_len
        self.max_length = min(int(max_length), limit) if max_length else limit
        self.prefix_id = prefix_id if prefix_id is not None else (tokenizer.eos_id if tokenizer.eos_id is not None else 0)
        self.eos_id = tokenizer.eos_id
        self._torch = torch
        self._warned: set[str] = set()

    def _warn(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            print(f"warning: {what}", file=sys.stderr, flush=True)

    # -- encoding --
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's HF rule: trailing spaces of the context move to the continuation; the continuation's
        tokens are those of ``context + continuation`` after the context's (one encoding of the whole text)."""
        if not context:
            return [self.prefix_id], list(self.tok.encode(continuation))
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = list(self.tok.encode(context + continuation))
        ctx = list(self.tok.encode(context))
        return ctx, whole[len(ctx):]

    # -- forward --
    def _logits(self, rows: list[list[int]]):
        """Logits [B, T, V] of right-padded ``rows`` (each at most max_length long)."""
        torch = self._torch
        T = max(len(r) for r in rows)
        idx = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        with torch.inference_mode():
            return self.model(idx.to(self.device))

    def score_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), is greedy)`` per ``(context ids, continuation ids)``; the context
        is cut on the left to fit ``max_length`` (a continuation longer than that is scored on its last part)."""
        torch = self._torch
        L = self.max_length
        items = []
        for ctx, cont in pairs:
            full = (list(ctx) + list(cont))[-(L + 1):]
            n = min(len(cont), len(full) - 1)
            if n < len(cont):
                self._warn(f"a continuation of {len(cont)} tokens is longer than max_length {L}: scoring its last {n}")
            items.append((full[:-1], full[1:], n))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(items)
        order = sorted((i for i in range(len(items)) if items[i][2] > 0), key=lambda i: -len(items[i][0]))
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            logits = self._logits([items[i][0] for i in batch])
            for row, i in enumerate(batch):
                inp, tgt, n = items[i]
                lp = logits[row, len(inp) - n:len(inp)].float().log_softmax(-1)  # [n, V]
                t = torch.tensor(tgt[-n:], device=lp.device)
                out[i] = (float(lp.gather(1, t[:, None]).sum()), bool((lp.argmax(-1) == t).all()))
        return out

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in pairs])

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """``(context, continuation)`` windows scoring every token of ``text`` once (lm-eval's HF model's)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        tokens = list(self.tok.encode(text))
        return [make_disjoint_window(w) for w in get_rolling_token_windows(
            token_list=tokens, prefix_token=self.prefix_id, max_seq_len=self.max_length, context_len=1)]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        windows = [self.rolling_windows(t) for t in texts]
        flat = self.score_tokens([w for ws in windows for w in ws])
        out, k = [], 0
        for ws in windows:
            out.append(float(sum(s for s, _ in flat[k:k + len(ws)])))
            k += len(ws)
        return out

    def _decode_after(self, context: list[int], gen: list[int]) -> str:
        """The text of ``gen`` as it continues ``context``: a sentencepiece model decodes a leading "▁" of
        the first piece as nothing, so the text is decoded after the context's last tokens and cut after them."""
        tail = context[-8:]
        head = self.tok.decode(tail)
        text = self.tok.decode(tail + gen)
        return text[len(head):] if text.startswith(head) else self.tok.decode(gen)

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        """Greedy continuations of ``(context, gen_kwargs)``: up to ``max_gen_toks`` tokens (default 256), cut
        before the first of the ``until`` strings, stopped at the EOS token. Past ``max_length`` the window slides."""
        torch = self._torch
        L = self.max_length
        jobs = []
        for ctx, kw in requests:
            kw = dict(kw or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kw.pop("max_gen_toks", 256))
            if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
                self._warn(f"generation settings {kw} ignored: generation is greedy")
            ids = list(self.tok.encode(ctx)) if ctx else [self.prefix_id]
            jobs.append({"ids": ids, "until": [u for u in until if u], "max_gen": max_gen, "gen": [], "text": None})
        order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i]["ids"]))
        for b in range(0, len(order), self.batch_size):
            batch = [jobs[i] for i in order[b:b + self.batch_size]]
            for j in batch:
                if j["max_gen"] <= 0:
                    j["text"] = ""
            while True:
                live = [j for j in batch if j["text"] is None]
                if not live:
                    break
                rows = [(j["ids"] + j["gen"])[-L:] for j in live]
                logits = self._logits(rows)
                nxt = logits[torch.arange(len(rows), device=logits.device),
                             torch.tensor([len(r) - 1 for r in rows], device=logits.device)].argmax(-1).tolist()
                for j, t in zip(live, nxt, strict=True):
                    if self.eos_id is not None and t == self.eos_id:
                        j["text"] = self._decode_after(j["ids"], j["gen"])
                        continue
                    j["gen"].append(t)
                    text = self._decode_after(j["ids"], j["gen"])
                    cut = min((text.find(u) for u in j["until"] if u in text), default=-1)
                    if cut >= 0:
                        j["text"] = text[:cut]
                    elif len(j["gen"]) >= j["max_gen"]:
                        j["text"] = text
        return [j["text"] for j in jobs]


# ---- the lm-eval model ---------------------------------------------------------------------------

_LM_CLASS = None


def lm_class():
    """``PretrainLM(model, tokenizer, batch_size=16, max_length=None)``: an ``lm_eval.api.model.LM`` over
    :class:`NativeScorer` (defined on first use: importing lm_eval is not free)."""
    global _LM_CLASS
    if _LM_CLASS is not None:
        return _LM_CLASS
    from lm_eval.api.model import LM

    class PretrainLM(LM):
        def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int | None = None):
            super().__init__()
            self.scorer = NativeScorer(model, tokenizer, batch_size, max_length)
            self._device = self.scorer.device

        @property
        def max_length(self) -> int:
            return self.scorer.max_length

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.scorer.tok, "path", "pretrain")).replace("/", "__")

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            args = [r.args for r in requests]
            out = self.scorer.loglikelihood(args)
            for a, o in zip(args, out, strict=True):
                self.cache_hook.add_partial("loglikelihood", a, o)
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            args = [r.args for r in requests]
            out = self.scorer.loglikelihood_rolling([a[0] for a in args])
            for a, o in zip(args, out, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", a, o)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            args = [r.args for r in requests]
            out = self.scorer.generate(args)
            for a, o in zip(args, out, strict=True):
                self.cache_hook.add_partial("generate_until", a, o)
            return out

    _LM_CLASS = PretrainLM
    return PretrainLM


# ---- command line --------------------------------------------------------------------------------


def _limit(s: str) -> float | int:
    """A count of documents (an integer >= 1) or a fraction of them (in (0, 1))."""
    import math

    want = "expected a count (an integer >= 1) or a fraction in (0, 1)"
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number: {want}") from None
    if not math.isfinite(v) or v <= 0 or (v >= 1 and v != int(v)):
        raise argparse.ArgumentTypeError(f"{s} is out of range: {want}")
    return int(v) if v >= 1 else v


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from .cli_numbers import integer

    p = argparse.ArgumentParser(prog="python -m pretrain.lm_eval", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint (.../step_NNNNNNNN), a directory of them, or a run directory")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task (or group) names")
    p.add_argument("--include-path", action="append", default=[], help="a directory of extra task YAMLs (repeatable)")
    p.add_argument("--no-default-tasks", action="store_true",
                   help="index only --include-path tasks (skips indexing lm-eval's built-in task configs, seconds)")
    p.add_argument("--num-fewshot", type=integer(0), help="few-shot examples per prompt, >= 0 (default: the task's)")
    p.add_argument("--batch-size", type=integer(1), default=16, help="sequences per forward, >= 1 (default 16)")
    p.add_argument("--limit", type=_limit, help="documents per task: a count, or a fraction below 1")
    p.add_argument("--max-length", type=integer(1),
                   help="tokens per forward, >= 1 (default and at most: the model's max_seq_len)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and activations")
    p.add_argument("--tokenizer", help="the tokenizer file (default: the run's)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check against the checkpoint's manifest")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the few-shot sampling, >= 0 (default 0)")
    p.add_argument("--output", help="write the results as JSON to this file")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The lm-eval results dict of ``args`` (parsed by :func:`parse_args`), with our ``checkpoint`` info."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok, info = load(args.checkpoint, device, args.dtype, args.tokenizer, verify=not args.no_verify)
    lm = lm_class()(model, tok, batch_size=args.batch_size, max_length=args.max_length)
    tm = TaskManager(include_path=args.include_path or None, include_defaults=not args.no_default_tasks)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(unknown)}"
                         + (" (--no-default-tasks: only --include-path tasks are known)" if args.no_default_tasks else ""))
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                                      task_manager=tm, log_samples=False, random_seed=args.seed,
                                      numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                      fewshot_random_seed=args.seed)
    results = dict(results or {})
    results.pop("samples", None)
    results["checkpoint"] = {**info, "device": device, "dtype": args.dtype, "max_length": lm.max_length}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("error: lm-eval is not installed: pip install -e '.[eval]'", file=sys.stderr)
        return 2
    from data_prep.errors import DataPrepError

    from .checkpoint import CheckpointError
    from .config_loader import ConfigError
    from .rundir import RunDirError

    try:
        results = run(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, RunDirError, DataPrepError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from lm_eval.utils import handle_non_serializable, make_table

    c = results["checkpoint"]
    print(f"{c['checkpoint']} (step {c['step']}) on {c['device']}, {c['dtype']}, max_length {c['max_length']}")
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
