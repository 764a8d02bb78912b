"""Hallo3 talking-portrait video in plain PyTorch: the engine behind the Hallo ComfyUI nodes and the command line."""

__version__ = "0.1.0"
