"""Strip a training checkpoint to ``state_dict`` + ``meta`` for sharing, named by its sha256.

Example:
    python tools/publish_model.py work_dirs/coprs_tiny_shapes_cpu published/coprs_tiny_shapes_cpu.pth

Same as ``coprs publish-model`` (mmsegmentation's ``tools/model_converters/publish_model.py``).
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs publish-model`
        sys.exit(main(["publish-model", *sys.argv[1:]]))
