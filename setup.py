from setuptools import find_packages, setup


def version() -> str:
    with open("pretrain/__init__.py") as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in pretrain/__init__.py")


setup(
    name="pretrain",
    version=version(),
    description="GPT pretraining with DeepSpeed ZeRO on mosaicml-streaming data, from muP proxies to Phi-3-mini",
    packages=find_packages(include=["pretrain", "pretrain.*", "data_prep", "data_prep.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        # mosaicml-streaming imports torchvision; it must be the build matching torch.
        "torchvision",
        "deepspeed>=0.16",
        "mosaicml-streaming>=0.11",
        "sentencepiece>=0.2",
        "tokenizers>=0.15",  # data_prep tokenize --tokenizer tokenizer.json (Hugging Face tokenizers)
        "pyarrow>=14",
        "zstandard>=0.22",
        "numpy",
        "pyyaml",
        "tensorboard",
        "matplotlib",
        "tqdm",
        "psutil",  # pretrain.training.loop: CPU memory (RSS) in the training log
        "safetensors>=0.4",  # pretrain.export writes model.safetensors
        "scipy>=1.11",  # pretrain.forecast fits loss laws; experiments.stats (Spearman)
    ],
    # the tests load exported checkpoints with transformers, read them with safetensors, and log offline to wandb
    # wandb: logging.wandb in the run config (Weights & Biases), optional
    # eval: python -m pretrain.lm_eval (benchmarks with EleutherAI's lm-evaluation-harness), optional
    extras_require={"test": ["pytest>=8", "transformers>=4.44", "safetensors>=0.4", "wandb>=0.17", "lm-eval>=0.4"],
                    "wandb": ["wandb>=0.17"],
                    "eval": ["lm-eval>=0.4"]},
    entry_points={
        "console_scripts": [
            "pretrain=pretrain.main:main",
            "pretrain-plot=pretrain.plot:main",
        ]
    },
)
