"""Build the offline data.

python scripts/build_dataset.py --out data [--seed 0] [--frames 40]
python scripts/build_dataset.py --demo data/demo
"""

import sys

from tdms.commands.build_data import main

if __name__ == "__main__":
    sys.exit(main())
