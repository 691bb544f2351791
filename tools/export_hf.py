"""Same as ``coprs export-hf``: merge LoRA adapters and write a transformers folder + seg head.

Example:
    python tools/export_hf.py CONFIG CHECKPOINT --out exported/
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs export-hf`
        sys.exit(main(["export-hf", *sys.argv[1:]]))
