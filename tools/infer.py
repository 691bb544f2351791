"""Segment an image from an instruction; same as ``coprs infer``.

Example:
    python tools/infer.py --config configs/coprs/coprs_tiny_shapes_cpu.py \
        coprs/assets/sample.png "the shape left of the blue square" --out outputs/demo
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs infer`
        sys.exit(main(["infer", *sys.argv[1:]]))
