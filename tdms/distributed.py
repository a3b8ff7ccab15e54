"""Many processes through PyTorch's own engine: `torchrun --nproc-per-node N <command> ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a one-process no-op, so the
same code runs on a laptop. Training uses DistributedDataParallel (NCCL on CUDA, gloo on CPU); dataset-mode
inference and batch evaluation split their videos across the ranks (`shard`) and meet at a barrier.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tdms.errors import UserError

# The ranks fill the flow cache (each its share) before a barrier; network flows on a big dataset take long.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ONE = World()  # a single process


def from_env() -> World:
    """The world torchrun describes in the environment (one process when it does not)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from None
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} does not fit WORLD_SIZE={size}")
    return World(rank, size, local)


def init(device_type: str = "cpu") -> World:
    """Join the process group when torchrun started several processes: NCCL for CUDA, gloo otherwise."""
    world = from_env()
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
    return world


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shard(items: list, world: World) -> list:
    """This rank's share of `items`: every size-th item from its rank on (empty when size > len(items))."""
    return items[world.rank :: world.size]


def sum_floats(values: list[float], world: World, device) -> list[float]:
    """Element-wise sum of `values` over the ranks (every rank gets it)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
