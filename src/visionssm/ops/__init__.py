"""Tensor functions: the selective scan and its backends."""

from visionssm.ops import scan_onnx as _scan_onnx  # noqa: F401  (ONNX translation, registered lazily)
from visionssm.ops.directional_scan import directional_scan, directional_scan_reference
from visionssm.ops.scan_reference import selective_scan_reference
from visionssm.ops.selective_scan import available_backends, scan_macs, selective_scan

__all__ = ["available_backends", "directional_scan", "directional_scan_reference", "scan_macs", "selective_scan",
           "selective_scan_reference"]
