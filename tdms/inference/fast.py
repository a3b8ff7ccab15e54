"""One frame of the recurrence, run fast: channels_last, bf16/fp16, torch.compile, CUDA graphs.

    step = make_step(model, "cuda", amp="bf16", channels_last=True, cuda_graph=True)
    o_t, state = step(i_prev, i_t, o_prev, p_t, state)   # (B,3,H,W) on the device, H, W multiples of 4

O_t comes back in fp32 whatever `amp` is. With bf16/fp16 TDMS-Net's heads (mask, flow, residual) run in a cast copy
of the network (its two layers that read the frames read 8-bit frames exactly and O_{t-1} to about 16 bits:
FRAME_LAYERS) and O_t = M·warp(O_{t-1}, F) + (1-M)·P_t + R is composed in fp32 (tdms_net.compose, as in
TDMSNet.forward), so the recurrence carries O at full precision. (Autocast does the same on CUDA, but on CPU it runs
reflection padding in fp32 and casts every layer's input twice, which costs more than bf16 saves.) Networks without
separate heads (Lai et al.'s) and their `state` run under autocast.

Tolerances against the plain fp32 NCHW forward (tests/inference/test_batched.py): channels_last and batching
≤ 1e-5; bf16 a mean absolute difference ≤ 5e-3 per frame. bf16 pays off on CPUs with AVX512-BF16/AMX
(scripts/bench/benchmark.py measures it); fp16 needs CUDA.
"""

import copy
from contextlib import nullcontext

import torch
import torch.nn as nn

from tdms.devices import keep_freed_memory
from tdms.errors import UserError
from tdms.nets.layers import memory_format
from tdms.nets.prepacked import can_prepack, conv_call, frame_output, packed, padded, prepack
from tdms.nets.tdms_net import compose

AMP = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


# TDMS-Net's layers that read the frames, cat(I_{t-1}, I_t) and cat(O_{t-1}, P_t), and which of their parts carry the
# recurrence's own state: O_{t-1}, read at about 16 bits of mantissa (SplitFrames). With every frame rounded to bf16
# (8 bits of mantissa) the recurrence drifted from the fp32 one with an earlier checkpoint: over the 40 frames of
# pencilsketch on real/bikes_0 the outputs were 44.45 dB apart. The other parts are frames: 8-bit ones enter exactly.
FRAME_LAYERS = {"conv1a": (), "conv1b": (0,)}
FRAME_SCALE = 255.0  # an 8-bit frame's value k/255, times 255, is the integer k: exact in bf16 (0..256) and fp16


class SplitFrames(nn.Module):
    """`layer` (a ConvLayer reading 3-channel frames) in `dtype` on fp32 parts, losing none of the precision that
    feeds the recurrence:
    - a frame part goes in as 255·x, read by its weights / 255: an 8-bit frame exactly (k/255 -> the integer k), any
      other one rounded to `dtype` as any activation is;
    - a part in `split` (O_{t-1}) goes in as hi = dtype(x) and lo = dtype(x - hi), both read by its weights, so that
      W·hi + W·lo = W·x to about 16 bits of mantissa (hi + lo represents x to 2^-16 relative).
    One conv then reads 3·(parts + len(split)) channels: 6 for cat(I_{t-1}, I_t), 9 for cat(O_{t-1}, P_t) (every
    part split, 12 each, cost 1.5-2× as much; in fp32 these 7×7 convs at full resolution took a fifth of a bf16
    frame). The scaled weights are made in fp32 from `layer`'s weights and rounded to `dtype` once."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype, split=()):
        super().__init__()
        conv = layer.conv2d
        self.parts, self.split, self.dtype = conv.in_channels // 3, tuple(split), dtype
        self.layer = copy.deepcopy(layer)
        self.layer.conv2d = nn.Conv2d(3 * (self.parts + len(self.split)), conv.out_channels, conv.kernel_size,
                                      conv.stride, device=conv.weight.device)
        weight = conv.weight.detach().float()
        per_part = [weight[:, 3 * j:3 * j + 3] * (1 if j in self.split else 1 / FRAME_SCALE)
                    for j in range(self.parts)]
        with torch.no_grad():
            self.layer.conv2d.weight.copy_(torch.cat(per_part + [weight[:, 3 * j:3 * j + 3] for j in self.split], 1))
            self.layer.conv2d.bias.copy_(conv.bias)
        self.layer.to(dtype=dtype, memory_format=memory_format(conv.weight))

    def staged(self, parts) -> torch.Tensor:
        """The conv's input (B, 3·(parts + len(split)), H, W) in `dtype` and the parts' layout: each frame part as
        255·x, each split part as hi, then the split parts' lo = dtype(x - hi), each written straight into its slot."""
        if len(parts) != self.parts or any(p.shape[1] != 3 for p in parts):
            raise ValueError(f"SplitFrames reads {self.parts} 3-channel parts, got {[tuple(p.shape) for p in parts]}")
        n, _, h, w = parts[0].shape
        out = torch.empty((n, 3 * (self.parts + len(self.split)), h, w), dtype=self.dtype, device=parts[0].device,
                          memory_format=memory_format(parts[0]))
        for j, x in enumerate(parts):
            if j in self.split:
                out[:, 3 * j:3 * j + 3] = x
            else:
                torch.mul(x, FRAME_SCALE, out=out[:, 3 * j:3 * j + 3])
        for k, j in enumerate(self.split):
            c = 3 * (self.parts + k)
            torch.sub(parts[j], out[:, 3 * j:3 * j + 3], out=out[:, c:c + 3])
        return out

    def forward(self, *parts):
        layer, conv = self.layer, self.layer.conv2d
        if layer.packs is not None and not torch.is_grad_enabled() and parts[0].device.type == "cpu" \
                and conv.stride == (1, 1) and min(parts[0].shape[-2:]) > conv.kernel_size[0] // 2:
            return self.prepacked(parts)
        return layer(self.staged(parts))

    def prepacked(self, parts) -> torch.Tensor:
        """The prepacked path (nets/prepacked.py): the input is staged in the parts' own layout (NCHW from the
        recurrence: whole planes) and copied once, all channels together, into a reflection-padded
        channels_last buffer on which oneDNN runs the conv unpadded. (Written part by part into the buffer's
        3-channel slices, the copies were strided gathers, 2.8× slower; on a channels_last copy of the frames and
        separate padded copies, the layer read and wrote frame-sized tensors 26 times a frame.)"""
        layer, conv = self.layer, self.layer.conv2d
        p = conv.kernel_size[0] // 2
        buf = padded((self.staged(parts),), p, p)
        f = layer.frame  # the output in a frame for the next conv (ConvLayer.frame): the conv zero-padded by it
        weight = packed(layer.packs, f"split {f}", conv.weight, buf.shape, (f, f))
        return frame_output(conv_call(buf, weight, conv.bias, (f, f), (1, 1), layer.act), f)


class Step(nn.Module):
    """(I_{t-1}, I_t, O_{t-1}, P_t, *state) -> (O_t fp32, *state), all (B,C,H,W)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype | None, channels_last: bool, device_type: str,
                 prepacked: bool = True):
        super().__init__()
        model = net
        self.dtype, self.device_type = dtype, device_type
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.split = dtype is not None and hasattr(net, "heads")  # heads in dtype, composition in fp32
        if self.split or channels_last:  # a copy: the caller's model keeps its weights
            net = copy.deepcopy(net).to(dtype=dtype if self.split else None, memory_format=self.memory_format)
        if self.split:
            for name, split in FRAME_LAYERS.items():
                if hasattr(net, name):  # built from the fp32 layer: its frame weights / 255 are rounded once
                    setattr(net, name, SplitFrames(getattr(model, name), dtype, split))
        self.prepacked = prepacked and device_type == "cpu" and channels_last \
            and can_prepack(dtype if self.split else torch.float32)
        if self.prepacked:
            prepack(net)  # the copy's weights are fixed: oneDNN's reordered weights are made once (nets/prepacked.py)
        self.net = net

    def fmt(self, x: torch.Tensor, dtype=None) -> torch.Tensor:
        return x.to(dtype=dtype or x.dtype, memory_format=self.memory_format)

    def forward(self, i_prev, i_t, o_prev, p_t, *state):
        if self.split:
            # the frames go in fp32: the pre-alignment warps them in fp32, and FRAME_LAYERS read them as SplitFrames
            # says (prepacked, in any layout: SplitFrames.prepacked)
            frames = [x.float() if self.prepacked else self.fmt(x, torch.float32) for x in (i_prev, i_t, o_prev, p_t)]
            mask, flow, residual = self.net.heads(*frames)
            gate = getattr(self.net, "residual_gate", "none")
            # in fp32 and in O_{t-1}'s layout (a mixed layout makes every elementwise op a strided gather)
            mask, flow, residual = (x.to(torch.float32, memory_format=memory_format(o_prev))
                                    for x in (mask, flow, residual))
            return (compose(mask, flow, residual, o_prev, p_t, gate)[0],)
        extra = {"state": state or None} if getattr(self.net, "recurrent", False) else {}
        # no cast cache: cached weight copies would outlive a CUDA graph capture's memory pool
        amp = torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False) if self.dtype else nullcontext()
        with amp:
            out = self.net(*(self.fmt(x) for x in (i_prev, i_t, o_prev, p_t)), **extra)
        return (out["output"].float(), *(out.get("state") or ()))


class CudaGraphs:
    """Replays one captured CUDA graph per input shape: within a video group the frame size and batch are fixed,
    so each frame costs one launch instead of ~100 kernel launches. Outputs are copied out of the graph's
    buffers, so they stay valid across calls."""

    def __init__(self, fn):
        self.fn, self.graphs = fn, {}

    def __call__(self, *xs):
        key = tuple((tuple(x.shape), x.dtype) for x in xs)
        if key not in self.graphs:
            self.graphs[key] = self.capture(xs)
        graph, inputs, outputs = self.graphs[key]
        for buf, x in zip(inputs, xs, strict=True):
            buf.copy_(x)
        graph.replay()
        return tuple(y.clone() for y in outputs)

    def capture(self, xs):
        inputs = [x.clone() for x in xs]  # clone keeps the memory format
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: cuDNN autotuning, compile, lazy init
            for _ in range(3):
                self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.fn(*inputs)
        return graph, inputs, outputs


def make_step(model: nn.Module, device, amp: str = "fp32", channels_last: bool = False, compile: bool = False,
              cuda_graph: bool = False, keep_memory: bool = False):
    """step(i_prev, i_t, o_prev, p_t, state=None) -> (O_t fp32, state); call it under torch.inference_mode().

    amp: fp32 | bf16 | fp16 (fp16 on CUDA only). compile: torch.compile, specialised per input shape.
    cuda_graph: capture one CUDA graph per input shape (CUDA only). keep_memory: on CPU, from the first frame on,
    keep freed memory mapped (devices.keep_freed_memory; process-wide).
    """
    device = torch.device(device)
    if amp not in AMP:
        raise UserError(f"unknown dtype {amp!r}; choose from {list(AMP)}")
    if amp == "fp16" and device.type != "cuda":
        raise UserError(f"fp16 needs a CUDA device, got {device} (on CPU use bf16)")
    if cuda_graph and device.type != "cuda":
        raise UserError(f"CUDA graphs need a CUDA device, got {device}")
    if cuda_graph and getattr(model, "flow_prior", False):
        raise UserError("CUDA graphs cannot capture this model's flow prior (DIS runs on the CPU); "
                         "drop --cuda-graph")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed frame sizes: let cuDNN pick its fastest kernels once
    # compiled, the plain layers: inductor with freezing reorders the weights for oneDNN itself, and the prepacked
    # path's strided views and framed outputs are not its to trace
    fn = Step(model, AMP[amp], channels_last, device.type, prepacked=not compile)
    if compile:  # freezing: the weights are constants here, so inductor may pre-pack them (oneDNN on CPU)
        fn = torch.compile(fn, dynamic=False, options={"freezing": True})
    if cuda_graph:
        fn = CudaGraphs(fn)

    first = [keep_memory and device.type == "cpu"]

    def step(i_prev, i_t, o_prev, p_t, state=None):
        if first[0]:  # before the first frame: its activations are then mapped once, not once each
            first[0] = False
            keep_freed_memory()
        out = fn(i_prev, i_t, o_prev, p_t, *(state or ()))
        return out[0], tuple(out[1:]) or None

    return step
