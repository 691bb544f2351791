"""Serve the web demo (gradio, ``pip install -e ".[demo]"``); same as ``coprs demo``.

Example:
    python tools/demo.py --config configs/coprs/coprs_tiny_shapes_cpu.py \
        --checkpoint work_dirs/coprs_tiny_shapes_cpu
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs demo`
        sys.exit(main(["demo", *sys.argv[1:]]))
