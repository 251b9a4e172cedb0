"""visionssm: vision state space models (Vim, VMamba) and a fast selective scan for any device."""

from visionssm import models  # noqa: F401  (registers the models with timm)
from visionssm.ops import available_backends, selective_scan, selective_scan_reference

__version__ = "0.1.0"


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """timm's ``list_models`` restricted to this library's models."""
    import timm

    ours = set(timm.list_models(module=["vim", "vmamba", "videomamba"]))
    return [m for m in timm.list_models(pattern, pretrained=pretrained) if m in ours]


def create_model(model_name: str, **kwargs):
    """timm's ``create_model`` for this library's models (a ValueError names the known ones)."""
    import timm

    known = list_models()
    if model_name not in known:
        raise ValueError(f"model_name: expected one of {known}, got {model_name!r}")
    return timm.create_model(model_name, **kwargs)


__all__ = ["available_backends", "create_model", "list_models", "selective_scan",
           "selective_scan_reference", "__version__"]
