"""Print a config with its _base_ files and --cfg-options merged; same as ``coprs print-config``.

Example:
    python tools/print_config.py configs/coprs/coprs_tiny_shapes_cpu.py --cfg-options model.rl.answer_coef=0 [--save-path flat.py]
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs print-config`
        sys.exit(main(["print-config", *sys.argv[1:]]))
