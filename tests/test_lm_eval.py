"""``python -m pretrain.lm_eval``: our GPT as an lm-evaluation-harness model, offline, on a task defined
here (a local JSONL and a task YAML), checked against the model's own log-probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, tiny_overrides

pytest.importorskip("lm_eval")

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")

DOCS = [
    {"question": "def add(a, b):\n    return a", "answer": " + b", "choices": [" + b", " * b", "[0]"], "label": 0},
    {"question": "import os\nimport", "answer": " sys", "choices": [" sys", " json", " re"], "label": 1},
    {"question": "class Foo:\n    def __init__(self", "answer": "):", "choices": ["):", ", x):", "]"], "label": 0},
]

TASK_YAML = """\
task: tiny_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Nothing downloaded, the datasets cache in a temporary directory; one torch thread (a tiny model: more
    threads only wait on each other, and on a busy machine far longer)."""
    cache = tmp_path_factory.mktemp("hf_cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    for k, v in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache / "datasets"),
                 "HF_HOME": str(cache), "TOKENIZERS_PARALLELISM": "false"}.items():
        mp.setenv(k, v)
    yield
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory) -> Path:
    """A run directory with one checkpoint at step 2, made without training (seconds cheaper): the resolved
    run config as the trainer saves it, and a randomly initialised tiny muP + ALiBi model's weights (a model
    ``pretrain.export`` refuses) in the weights-only format of ``pretrain.merge``. A wide init (sigma 0.3:
    log-probs spread by nats, not hundredths) makes an off-by-one position or a wrong context visible."""
    import yaml
    from safetensors.torch import save_file

    from pretrain.checkpoint import WEIGHTS, commit
    from pretrain.model.gpt import GPT
    from pretrain.run_config import load_and_resolve

    run_dir = tmp_path_factory.mktemp("lm_eval") / "run"
    cfg, _ = load_and_resolve(DEMO, tiny_overrides(tiny_data, run_dir, **{
        "model.pos": "alibi", "model.mup": "{sigma_base: 0.3}"}), world_size=1)  # what export cannot take
    assert cfg.model.pos == "alibi" and cfg.model.mup is not None and cfg.model.multipliers()[1] != 1.0
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    ckpt = run_dir / "checkpoints" / "step_00000002"
    ckpt.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(text)
    (ckpt / "config.yaml").write_text(text)
    torch.manual_seed(0)
    save_file({k: v.clone().contiguous() for k, v in GPT(cfg.model).state_dict().items()}, str(ckpt / WEIGHTS))
    commit(ckpt, {"step": 2, "merged": {"method": "uniform", "sources": [], "weights": [1.0]}})
    return run_dir


@pytest.fixture(scope="module")
def loaded(run_dir):
    from pretrain.lm_eval import lm_class, load

    model, tok, info = load(run_dir, device="cpu")  # a run directory: its newest sound checkpoint
    assert info["step"] == 2 and info["checkpoint"].endswith("step_00000002")
    return model, tok, lm_class()(model, tok, batch_size=4, max_length=16)  # small windows: truncation is exercised


def logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, computed directly."""
    with torch.no_grad():
        lp = model(torch.tensor([ids[:-1]])).float().log_softmax(-1)[0]
    return lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def requests(*args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_and_rolling_match_the_model(env, loaded):
    model, tok, lm = loaded
    L = lm.max_length
    pairs = [(d["question"], c) for d in DOCS for c in d["choices"]] + [("", "hello world")]
    out = lm.loglikelihood(requests(*pairs))
    for (ctx, cont), (ll, greedy) in zip(pairs, out, strict=True):
        # ours: the continuation's tokens follow the context's in one encoding; an empty context is the EOS
        c = tok.encode(ctx) if ctx else [tok.eos_id]
        x = tok.encode(ctx + cont)[len(c):] if ctx else tok.encode(cont)
        ids = (c + x)[-(L + 1):]
        assert ll == pytest.approx(float(logprobs(model, ids)[-len(x):].sum()), abs=1e-4)
        assert isinstance(greedy, bool)

    # varied log-probs: the equalities above are no formality
    assert float(logprobs(model, tok.encode(DOCS[0]["question"])).std()) > 0.5

    short, long = "x = 1", " ".join(d["question"] for d in DOCS) * 2
    toks = tok.encode(long)
    assert len(tok.encode(short)) < L < 2 * L < len(toks)
    rolled = lm.loglikelihood_rolling(requests((short,), (long,)))
    assert rolled[0] == pytest.approx(float(logprobs(model, [tok.eos_id] + tok.encode(short)).sum()), abs=1e-4)
    # each token once: windows of L predictions, each from the (at most L) tokens before it, EOS first
    seq, total, end = [tok.eos_id] + toks, 0.0, 0
    while end < len(toks):
        n = min(L, len(toks) - end)
        end += n
        total += float(logprobs(model, seq[max(0, end - L):end + 1])[-n:].sum())
    assert math.isfinite(rolled[1]) and rolled[1] == pytest.approx(total, abs=1e-3)


def test_generate_until_stops_at_the_stop_string(env, loaded):
    model, tok, lm = loaded
    ctx = "def f(x):\n    return"
    free = lm.generate_until(requests((ctx, {"until": [], "max_gen_toks": 12})))[0]
    assert isinstance(free, str) and len(free) >= 2
    stop = free[len(free) // 2:][:2]  # a string the greedy continuation is known to reach
    cut = lm.generate_until(requests((ctx, {"until": [stop], "max_gen_toks": 12}), ("", {"until": ["\n"], "max_gen_toks": 24})))
    assert cut[0] == free[:free.index(stop)] and stop not in cut[0]
    assert "\n" not in cut[1]


def test_simple_evaluate_and_cli_on_a_local_task(env, loaded, run_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from pretrain.lm_eval import main

    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_local.yaml").write_text(TASK_YAML.format(data=data))

    _, _, lm = loaded
    res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_local"], log_samples=False, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    acc = res["results"]["tiny_local"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and res["n-samples"]["tiny_local"]["effective"] == len(DOCS)

    out = tmp_path / "results.json"
    ckpt = run_dir / "checkpoints" / "step_00000002"
    assert main([str(ckpt), "--tasks", "tiny_local", "--include-path", str(tasks), "--no-default-tasks",
                 "--limit", "2", "--device", "cpu", "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert "acc,none" in saved["results"]["tiny_local"] and saved["checkpoint"]["step"] == 2
    assert main([str(ckpt), "--tasks", "nope", "--include-path", str(tasks), "--no-default-tasks"]) == 2
    assert main([str(run_dir / "checkpoints" / "step_00000009"), "--tasks", "tiny_local"]) == 3


def test_lm_eval_is_imported_lazily():
    import ast

    import pretrain.lm_eval as mod

    top = [n for n in ast.parse(Path(mod.__file__).read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names] + \
            [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] in ("lm_eval", "torch", "datasets", "transformers")], names
