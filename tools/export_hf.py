"""Same as ``coprs export-hf``: merge LoRA adapters and write a transformers folder + seg head.

Example:
    python tools/export_hf.py CONFIG CHECKPOINT --out exported/
"""

import sys

from coprs.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-hf", *sys.argv[1:]]))
