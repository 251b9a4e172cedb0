"""Tensor functions: the selective scan and its backends."""

from visionssm.ops.scan_reference import selective_scan_reference
from visionssm.ops.selective_scan import available_backends, scan_macs, selective_scan

__all__ = ["available_backends", "scan_macs", "selective_scan", "selective_scan_reference"]
