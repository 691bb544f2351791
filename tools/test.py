"""Evaluate a config on every split it names; same as ``coprs test``.

Example:
    python tools/test.py configs/coprs/coprs_tiny_shapes_cpu.py CHECKPOINT --out results.json \
        --show-dir work_dirs/panels [--reasoning gold|empty|all ...] [--cfg-options key=value ...]
    tools/dist_test.sh CONFIG CHECKPOINT 8 [...]  # torchrun, --launcher pytorch
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs test`
        sys.exit(main(["test", *sys.argv[1:]]))
