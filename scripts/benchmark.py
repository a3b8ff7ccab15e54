"""Measure TDMS-Net's speed on this machine: a table, JSON with --json, a bar chart with --plot (see
tdms/commands/benchmark.py).

    python scripts/benchmark.py --json demo_out/benchmark.json --plot demo_out/benchmark.png --sizes 854x480 1280x720
"""

import sys

from tdms.commands.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
