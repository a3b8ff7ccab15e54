"""Same as `tdms-test`; see `python scripts/test.py --help`.

    python scripts/test.py --input I --processed P --output O
"""

import sys

from tdms.commands.test import main

if __name__ == "__main__":
    sys.exit(main())
