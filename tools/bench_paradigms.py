"""Train and evaluate the CoPRS, LISA-style and Seg-Zero-style tiny assemblies under one budget.

Example:
    python tools/bench_paradigms.py --budget-minutes 3.5 --iters 2000 --out work_dirs/bench

Writes ``OUT/paradigms.json`` and ``OUT/paradigms.md``. Same as ``coprs bench-paradigms``.
"""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs bench-paradigms`
        sys.exit(main(["bench-paradigms", *sys.argv[1:]]))
