"""Adaptive Memory Momentum: AM-SGD / AM-AdamW and the paper's reproduction suite."""

__version__ = "0.1.0"
