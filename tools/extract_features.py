"""Same as ``coprs extract-features``; see ``python tools/extract_features.py --help``."""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs extract-features`
        sys.exit(main(["extract-features", *sys.argv[1:]]))
