"""Public Python API."""

from .inference import init_segmentor, load_checkpoint, segment
from .outputs import result_summary, write_result

__all__ = ["init_segmentor", "segment", "load_checkpoint", "write_result", "result_summary"]
