"""Same as ``coprs browse-dataset``; see ``python tools/browse_dataset.py --help``."""

import sys

from coprs.cli import main

if __name__ == "__main__":
    sys.exit(main(["browse-dataset", *sys.argv[1:]]))
