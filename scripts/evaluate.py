"""Same as `tdms-evaluate`; see `python scripts/evaluate.py --help`.

python scripts/evaluate.py --input I --results O --processed P --out eval/
python scripts/evaluate.py --config configs/eval_builder_test.yaml
"""

import sys

from tdms.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
