"""Same as ``coprs extract-features``; see ``python tools/extract_features.py --help``."""

import sys

from coprs.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract-features", *sys.argv[1:]]))
