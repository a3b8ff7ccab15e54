"""Build the offline train/val/test data (Lai et al.'s layout) or the demo pair.

tdms-build-data --out data --seed 0 --frames 40
tdms-build-data --demo data/demo
"""

import argparse
import sys
import time
from pathlib import Path

from tdms.builder.build import SPLITS, Settings, build, build_demo
from tdms.errors import UserError
from tdms.interrupts import interrupted_code, stop_on_sigterm

EXAMPLES = """examples:
  tdms-build-data --out data                          # train, val and test (about 5 CPU-minutes, 1.8 GB)
  tdms-build-data --out /tmp/tiny --frames 3 --max-videos 1 --splits test
  tdms-build-data --out data --force                  # rebuild a previous builder output from scratch
  tdms-build-data --demo data/demo                    # 60 frames of bikes.mp4 + a flickering operator
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tdms-build-data",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="output folder (created; must be empty or a previous build)")
    target.add_argument("--demo", type=Path, metavar="OUT", help="write only the demo pair into OUT")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic motion and random operators")
    parser.add_argument(
        "--frames", type=int, default=40, help="frames per video (real shots may have fewer; val at most 20)"
    )
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--max-videos", type=int, default=None, help="at most N videos per dataset and split")
    parser.add_argument("--force", action="store_true", help="rebuild a previous builder output from scratch")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    start = time.time()
    try:
        if args.demo is not None:
            info = build_demo(args.demo, force=args.force)
            print(f"demo: {info['frames']} frames in {args.demo}")
        else:
            settings = Settings(
                seed=args.seed, frames=args.frames, splits=tuple(args.splits), max_videos=args.max_videos
            )
            for split, info in build(args.out, settings, force=args.force).items():
                print(
                    f"{split}: {info['videos']} videos, {info['frames']} input frames, "
                    f"{info['pairs']} (video, task) pairs"
                )
    except UserError as err:
        print(f"tdms-build-data: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the videos written stay, the one in progress does not
        print(f"tdms-build-data: interrupted: the videos finished are kept in {args.demo or args.out}; run the same "
              f"command again to complete it", file=sys.stderr)
        return interrupted_code(err)
    print(f"done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
