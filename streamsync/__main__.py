"""`python -m streamsync ...`: the command line (see streamsync.cli)."""

import sys

from streamsync.cli import main

if __name__ == "__main__":
    sys.exit(main())
