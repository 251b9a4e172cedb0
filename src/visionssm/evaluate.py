"""``visionssm eval``: top-1/top-5 and loss of a checkpoint (the code lives beside the training loop)."""

from visionssm.train import evaluate_main as main

__all__ = ["main"]
