"""Lai et al.'s network over a video (DESIGN §9): its ConvLSTM state is carried from frame to frame.

    from tdms.checkpoint import load_model
    from tdms.lai_infer import model_frames
    model = load_model("runs/lai/last.pth")                  # TDMS-Net or LaiNet, as the checkpoint says
    for o_t in model_frames(model, zip(frames_i, frames_p), "cuda"):
        ...                                                  # (H,W,3) float32, unclipped
"""

from contextlib import nullcontext

import torch

from tdms.infer import AMP, pad_to, tdms_frames
from tdms.io import frames_to_tensor, tensor_to_frame


@torch.inference_mode()
def lai_frames(model, pairs, device="cpu", amp: str = "fp32"):
    """O_0 = P_0, then (O_t, state) = model(I_{t-1}, I_t, O_{t-1}, P_t, state), the state zero at frame 1."""
    dtype = AMP[amp]
    if dtype is not None and torch.device(device).type != "cuda":
        raise ValueError(f"--dtype {amp} needs a CUDA device")
    ctx = torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()
    i_prev = o_prev = state = None
    for i_np, p_np in pairs:
        i_t, size = pad_to(frames_to_tensor(i_np).to(device))
        p_t, _ = pad_to(frames_to_tensor(p_np).to(device))
        if o_prev is None:
            o_t = p_t
        else:
            with ctx:
                out = model(i_prev, i_t, o_prev, p_t, state)
            o_t, state = out["output"].float(), out["state"]
        yield tensor_to_frame(o_t[..., : size[0], : size[1]])
        i_prev, o_prev = i_t, o_t


def model_frames(model, pairs, device="cpu", amp: str = "fp32"):
    """`tdms_frames` or `lai_frames`, whichever fits the network (recurrent ones carry a state)."""
    frames = lai_frames if getattr(model, "recurrent", False) else tdms_frames
    return frames(model, pairs, device, amp)
