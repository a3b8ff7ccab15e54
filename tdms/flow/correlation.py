"""FlowNet2's two custom CUDA ops in plain PyTorch: the correlation layer and the channel norm."""

import torch
import torch.nn.functional as F


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 20, stride: int = 2) -> torch.Tensor:
    """Cost volume of two (B,C,H,W) feature maps -> (B,D*D,H,W), D = 2*max_displacement//stride + 1.

    out[b, (j+r)*D + (i+r), y, x] = sum_c f1[b,c,y,x] * f2[b,c, y+j*stride, x+i*stride] / C with r = D//2 and
    f2 zero outside the image: NVIDIA's Correlation(pad_size=20, kernel_size=1, max_displacement=20, stride1=1,
    stride2=2), channel index row-major over (dy, dx), sum divided by kernel_size²·C = C.
    One displacement at a time: the working memory is one (B,C,H,W) product, not D² of them, and autograd keeps
    only views of f1 and the padded f2. fp16/bf16 are computed in float32 (the original casts to fp32 here too).
    """
    if f1.shape != f2.shape or f1.dim() != 4:
        raise ValueError(f"correlation wants two (B,C,H,W) maps of one shape, got {tuple(f1.shape)}, {tuple(f2.shape)}")
    dtype = f1.dtype
    f1, f2 = f1.to(torch.promote_types(dtype, torch.float32)), f2.to(torch.promote_types(dtype, torch.float32))
    _, c, h, w = f1.shape
    r = max_displacement // stride
    f2 = F.pad(f2, (max_displacement,) * 4)  # zeros outside, so every shifted window below is in range
    out = []
    for j in range(-r, r + 1):
        y0 = max_displacement + j * stride
        for i in range(-r, r + 1):
            x0 = max_displacement + i * stride
            out.append((f1 * f2[:, :, y0:y0 + h, x0:x0 + w]).sum(1))
    return (torch.stack(out, 1) / c).to(dtype)


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,1,H,W) L2 norm over channels (NVIDIA's ChannelNorm, norm_deg 2), fp16/bf16 in float32.

    vector_norm's gradient is 0 where the norm is 0, where sqrt(sum x²) would give NaN.
    """
    return torch.linalg.vector_norm(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1, keepdim=True).to(x.dtype)
