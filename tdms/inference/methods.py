"""The five ways to turn (I_t, P_t) pairs into O_t, for tdms-test and the API alike.

    method = make_method("bonneel", "cpu", flow="dis", lam=1.0)
    for o_t in method.frames(pairs): ...    # (I_t, P_t) float32 (H,W,3) in, O_t float32 (H,W,3) out, unclipped

tdms: TDMS-Net's recurrence (a loaded network, or one loaded from a checkpoint file); naive: the ½/½ blend with
the warped previous output; bonneel: Bonneel et al. 2015's screened Poisson solve; ffmpeg-deflicker: FFmpeg's
deflicker filter (a gain per frame on the luma, mode am); identity: O = P.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tdms.devices import auto_dtype
from tdms.errors import UserError
from tdms.files import file_digest
from tdms.flow import build_flow
from tdms.inference.bonneel import bonneel_frames
from tdms.inference.deflicker import SIZE, check_size, deflicker_frames
from tdms.inference.fast import AMP, make_step
from tdms.inference.original import PROTOCOLS, original_frames
from tdms.inference.recurrence import identity_frames, naive_frames, step_frames
from tdms.nets.build import load_model

METHODS = ("tdms", "naive", "bonneel", "ffmpeg-deflicker", "identity")


@dataclass
class Method:
    frames: Callable  # iterator of (I_t, P_t) -> iterator of O_t
    description: str  # for a command's first line: "naive blend (dis-medium)"
    made_by: dict  # what makes the outputs (method, weights digest, options), kept in each output's marker
    step: Callable | None = None  # TDMS-Net's one-frame step (fast.make_step), for batched dataset mode


def make_method(name: str, device=None, model=None, checkpoint: Path | None = None, amp: str = "auto",
                channels_last: bool = True, compile: bool = False, cuda_graph: bool = False, flow="dis",
                lam: float = 1.0, verbose: bool = False, protocol: str = "tdms", keep_memory: bool = False,
                deflicker_size: int = SIZE) -> Method:
    """The method `name` (METHODS) with its options.

    tdms: `model` a loaded network (it runs where it is; `device`, if given, must be of its type), or None to
    load `checkpoint` (a file) onto `device`; amp (auto: bf16 where the device computes it natively, else fp32;
    devices.auto_dtype), channels_last, compile, cuda_graph and keep_memory as fast.make_step; protocol "original"
    runs the original test scripts' loop instead (inference/original.py: fp32, one frame at a time).
    naive, bonneel: `flow` a backend name or a callable flow(a, b) -> (B,2,H,W); bonneel's weight `lam`.
    ffmpeg-deflicker: its window of `deflicker_size` frames (FFmpeg's `size`, 2..129).
    device None means the model's device, or the CPU.
    """
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {list(METHODS)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
    if name == "tdms":
        return tdms_method(model, checkpoint, device, amp, channels_last, compile, cuda_graph, verbose, protocol,
                           keep_memory)
    if model is not None:
        raise UserError(f"model= is for method='tdms', not {name!r}")
    if protocol != "tdms":
        raise UserError(f"protocol {protocol!r} is the original test loop of a network: it needs method 'tdms'")
    if name == "identity":
        return Method(identity_frames, "identity", {"method": "identity"})
    if name == "ffmpeg-deflicker":
        check_size(deflicker_size)
        return Method(lambda pairs: deflicker_frames(pairs, deflicker_size),
                      f"FFmpeg deflicker (mode am, size {deflicker_size})",
                      {"method": "ffmpeg-deflicker", "deflicker_size": deflicker_size})
    backend = build_flow(flow) if isinstance(flow, str) else flow
    flow_name = getattr(backend, "name", getattr(backend, "__name__", type(backend).__name__))
    if name == "naive":
        return Method(lambda pairs: naive_frames(backend, pairs), f"naive blend ({flow_name})",
                      {"method": "naive", "flow": flow_name})
    return Method(lambda pairs: bonneel_frames(backend, pairs, lam, device or "cpu"),
                  f"Bonneel et al. 2015 (λ={lam}, {flow_name})",
                  {"method": "bonneel", "flow": flow_name, "lambda": lam})


def tdms_method(model, checkpoint: Path | None, device, amp: str, channels_last: bool, compile: bool,
                cuda_graph: bool, verbose: bool, protocol: str, keep_memory: bool) -> Method:
    if amp != "auto" and amp not in AMP:
        raise UserError(f"unknown amp {amp!r}; choose from {['auto', *AMP]}")
    if model is None:
        model = load_model(checkpoint, device or "cpu", verbose)
    on = next(model.parameters()).device
    if device is not None and torch.device(device).type != on.type:
        raise UserError(f"the model is on {on} but device={device!r}; move it (model.to(device)) or drop device=")
    made_by = {"method": "tdms"}
    if checkpoint is not None:
        made_by |= {"checkpoint": str(checkpoint), "checkpoint_sha256": file_digest(checkpoint)}
    what = f"tdms ({checkpoint})" if checkpoint is not None else "tdms"
    if protocol == "original":
        if compile or cuda_graph:
            raise UserError("protocol 'original' runs the plain network in fp32, one frame at a time, as the "
                            "original scripts did: drop compile / cuda_graph")
        made_by |= {"protocol": "original", "dtype": "fp32"}
        return Method(lambda pairs: original_frames(model, pairs, on), f"{what}, the original test loop (fp32)",
                      made_by)
    amp = auto_dtype(on) if amp == "auto" else amp
    step = make_step(model, on, amp, channels_last, compile, cuda_graph, keep_memory)
    made_by |= {"dtype": amp, "channels_last": channels_last}
    layout = ", channels_last" if channels_last else ""
    return Method(lambda pairs: step_frames(step, pairs, on), f"{what} in {amp}{layout}", made_by, step)
