"""Public Python API."""

from .inference import checkpoint_file, init_segmentor, load_checkpoint, segment
from .outputs import result_summary, write_result

__all__ = ["init_segmentor", "segment", "load_checkpoint", "checkpoint_file", "write_result",
           "result_summary"]
