"""Public Python API."""

from .inference import (
    EXPORT_MANIFEST,
    apply_export,
    check_export_heads,
    checkpoint_file,
    export_dir,
    init_segmentor,
    load_checkpoint,
    segment,
    segment_batch,
)
from .outputs import result_summary, write_result

__all__ = ["init_segmentor", "segment", "segment_batch", "load_checkpoint", "checkpoint_file", "export_dir",
           "apply_export", "check_export_heads", "EXPORT_MANIFEST", "write_result", "result_summary"]
