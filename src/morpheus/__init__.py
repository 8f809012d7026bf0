"""Morpheus for Python: run-time specialization of eBPF/XDP programs."""

__version__ = "0.1.0"
