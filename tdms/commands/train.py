"""tdms-train: train TDMS-Net on data in Lai et al.'s layout.

Examples:
    tdms-train --config configs/tdms_offline.yaml
    tdms-train --config configs/tdms_offline.yaml train.steps=200 train.out=runs/try data.crop=96
    tdms-train --config configs/tdms_offline.yaml --resume              # continue runs/.../last.pth exactly
    tdms-train --config configs/tdms_offline.yaml --init-weights W.pth  # start from weights only
    torchrun --nproc-per-node 8 $(which tdms-train) --config configs/paper_tdms.yaml   # DDP; train.batch is global
"""

import argparse
import sys

from tdms import distributed
from tdms.config import load_config
from tdms.errors import UserError
from tdms.interrupts import interrupted_code, stop_on_sigterm
from tdms.training.loop import train


def main(argv=None) -> int:
    stop_on_sigterm()  # `timeout`, a scheduler or a container stop: handled as Ctrl-C
    p = argparse.ArgumentParser(prog="tdms-train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="YAML config (defaults in tdms/config.py)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=1000")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out exactly where it stopped")
    p.add_argument("--init-weights", default="", help="start from these weights (fresh optimizer and step 0)")
    args = p.parse_intermixed_args(argv)  # overrides before or after the flags ("--resume train.steps=N")
    if args.resume and args.init_weights:
        p.error("--resume and --init-weights are different things; give one")
    try:
        cfg = load_config(args.config, args.overrides)
        world = distributed.from_env()
    except UserError as e:
        p.error(str(e))
    try:
        last = train(cfg, resume=args.resume, init_weights=args.init_weights)
    except UserError as e:  # NonFiniteLoss too
        rank = f" [rank {world.rank}]" if world.distributed else ""
        print(f"tdms-train{rank}: error: {e}", file=sys.stderr)
        return 1  # under torchrun the other processes are stopped; the last checkpoint stays as it was
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (stop_on_sigterm)
        if world.main:  # checkpoints are written atomically: the last one is whole, its temp file removed
            print(f"tdms-train: interrupted; the last checkpoint in {cfg.train.out} is intact "
                  "(--resume continues from it)", file=sys.stderr)
        return interrupted_code(err)
    finally:
        distributed.close()
    if world.main:
        print(f"done: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
