"""``visionssm predict``: the top classes of some images (the code lives beside the training loop)."""

from visionssm.train import predict_main as main

__all__ = ["main"]
