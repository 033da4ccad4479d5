"""GPT pretraining with DeepSpeed ZeRO on mosaicml-streaming data.

Importing this package has no side effects and imports neither torch nor
DeepSpeed; the heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
