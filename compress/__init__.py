"""compress: distil, prune, quantize, export and profile a PyTorch teacher for a target device."""

__version__ = "0.1.0"
