"""Entry point: ``deepspeed pretrain.py --config configs/X.yaml [key.sub=value ...]``.

Also runs under ``torchrun`` and as plain ``python pretrain.py`` (one process).
"""


from pretrain.main import exit_now, main

if __name__ == "__main__":
    exit_now(main())
