"""nn.Module building blocks: scan orders, the Mamba mixer, SS2D."""
