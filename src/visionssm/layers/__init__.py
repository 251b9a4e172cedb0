"""nn.Module building blocks: scan orders, the Mamba mixer, SS2D."""
from visionssm.layers.mamba import Mamba, RMSNorm  # noqa: F401
from visionssm.layers.ss2d import SS2D, VSSBlock  # noqa: F401
