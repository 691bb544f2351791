"""Count parameters per component of a config on the meta device (no weights needed).

Example:
    python tools/count_params.py configs/coprs/coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py --json

Same as ``coprs count-params``.
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs count-params`
        sys.exit(main(["count-params", *sys.argv[1:]]))
