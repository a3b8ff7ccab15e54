"""Measure TDMS-Net's speed on this machine: a table, and JSON with --json (see tdms/commands/benchmark.py).

    python scripts/benchmark.py --json demo_out/benchmark.json --sizes 854x480 1280x720
"""

import sys

from tdms.commands.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
