"""Tiny real-architecture builders for tests and the CPU demo (random-initialised, local)."""

__all__ = ["tiny_qwen", "tiny_sam", "data_fixtures"]
