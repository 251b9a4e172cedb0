"""Model families; importing this package registers them with timm."""
