"""``python -m tuner.bench``: see :mod:`tuner.bench.cli`."""

import sys

from tuner.bench.cli import main
from tuner.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
