"""Same as `tdms-train`; see `python scripts/train.py --help`.

    python scripts/train.py --config configs/tdms_offline.yaml
"""

import sys

from tdms.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
