"""Same as ``coprs browse-dataset``; see ``python tools/browse_dataset.py --help``."""

import sys

from coprs.cli import as_script, main

if __name__ == "__main__":
    with as_script():  # usage lines name this script, not `coprs browse-dataset`
        sys.exit(main(["browse-dataset", *sys.argv[1:]]))
