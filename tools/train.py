"""Train a config; same as ``coprs train``.

Example:
    python tools/train.py configs/coprs/coprs_tiny_shapes_cpu.py [--work-dir DIR] [--resume [CKPT]]
    torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch  # = tools/dist_train.sh CONFIG 8
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs train`
        sys.exit(main(["train", *sys.argv[1:]]))
