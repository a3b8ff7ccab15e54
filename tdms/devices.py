"""Where and how fast tdms runs: the device a name picks, the CPU's bf16 instructions, the precision
`--dtype auto` chooses, threads, and keeping freed memory mapped from frame to frame."""

from pathlib import Path

import torch

from tdms.errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for but torch sees no GPU")
    return torch.device(name)


def check_device(name: str, option: str) -> None:
    """A device torch cannot use here fails now, before any work, naming it."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"{option} {name}: not a torch device ({err})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise UserError(f"{option} {name}: this machine has {count} usable CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{option} {name}: MPS is not available on this machine")


def cpu_info() -> dict:
    """This CPU's model name and the bf16 instructions it has, read from /proc/cpuinfo's flags (Linux; elsewhere
    from what torch reports): avx512_bf16 (AVX512-BF16 dot products) and amx_bf16 (AMX tiles)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        cpu = getattr(torch, "cpu", None)
        flags = {name for name, check in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                          ("amx_bf16", "_is_amx_tile_supported"))
                 if callable(getattr(cpu, check, None)) and getattr(cpu, check)()}
    return {"model": model or "unknown CPU", "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 convolutions natively: a CUDA card that supports bf16, or a CPU with
    AVX512-BF16 or AMX (on other CPUs oneDNN emulates bf16, slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        info = cpu_info()
        return info["avx512_bf16"] or info["amx_bf16"]
    return False


def keep_freed_memory() -> bool:
    """From now on glibc's malloc serves large blocks from its heap and keeps what is freed there, instead of
    mapping every block over its mmap threshold afresh and unmapping it on free. A network run frame after frame
    allocates the same large activations each frame; mapped afresh, each of their pages faults on first touch
    (at 1920×1080, ~1.1 million minor faults and ~30 % of the CPU time in the kernel a frame). Call it before the
    first frame: that frame then maps its heap once (at 1920×1080 in bf16, 0.54 M faults) instead of every
    activation afresh and then the heap again on the second frame (0.87 M + 0.31 M). Process-wide and not undone:
    tdms-test calls it; API users may. Returns False where it does not apply (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def auto_dtype(device: torch.device) -> str:
    """The precision `--dtype auto` runs the network in on `device`: bf16 where it is native, else fp32."""
    return "bf16" if native_bf16(device) else "fp32"


def set_threads(threads: int) -> None:
    """Threads of torch and OpenCV in this process (small per-frame ops lose badly to oversubscription)."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
