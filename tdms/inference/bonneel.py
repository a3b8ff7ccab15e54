"""Bonneel et al. 2015 blind temporal consistency (SIGGRAPH Asia): one screened Poisson solve per frame.

Per frame t ≥ 1 and channel, O_t minimises Σ ‖∇O − ∇P_t‖² + w ‖O − T‖² with T = warp(O_{t−1}, F_t). Writing
O = P_t + D, the normal equations are (L + diag(w)) D = w · (T − P_t), L the 4-neighbour graph Laplacian with
Neumann borders. The right side is zero wherever w is, so λ = 0, or w ≡ 0 where L + diag(w) is singular, gives
D = 0 and O = P_t exactly; otherwise the system is symmetric positive definite.

Solver: Jacobi-preconditioned conjugate gradients (provably convergent on SPD systems, same code on CPU and CUDA),
started coarse-to-fine: each coarser level (2×2 sums of w and of the right side) is solved first and its upsampled
solution starts the next finer level. Plain CG is slowest at the smooth part of D inside large regions of w ≈ 0
(occlusions, flow failures); the coarse levels deliver that part, so the fine level needs few iterations.
"""

import warnings

import torch
import torch.nn.functional as F

from tdms.errors import UserError
from tdms.flow.warp import warp
from tdms.frames.io import frames_to_tensor, tensor_to_frame

SIGMA = 0.05  # colour distance scale of the confidence weight
BORDER = 2  # w = 0 this many pixels from the frame edge, where warping clamps


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """L x = −div ∇x for (B,C,H,W), ∇ forward differences with no flux across the frame edge (Neumann).

    (L x)_p = Σ over in-frame 4-neighbours q of (x_p − x_q).
    """
    gx = x[..., :, 1:] - x[..., :, :-1]  # (B,C,H,W-1)
    gy = x[..., 1:, :] - x[..., :-1, :]  # (B,C,H-1,W)
    out = torch.zeros_like(x)
    out[..., :, :-1] -= gx
    out[..., :, 1:] += gx
    out[..., :-1, :] -= gy
    out[..., 1:, :] += gy
    return out


def degree(height: int, width: int, device=None) -> torch.Tensor:
    """diag(L): the number of in-frame neighbours of each pixel, (1,1,H,W)."""
    d = torch.zeros(1, 1, height, width, device=device)
    d[..., 1:, :] += 1
    d[..., :-1, :] += 1
    d[..., :, 1:] += 1
    d[..., :, :-1] += 1
    return d


def confidence(i_t: torch.Tensor, i_warped: torch.Tensor, lam: float) -> torch.Tensor:
    """w = λ exp(−‖I_t − warp(I_{t−1})‖² / 2σ²) over RGB, zero within BORDER px of the edge: (B,1,H,W)."""
    dist = (i_t - i_warped).square().sum(1, keepdim=True)
    w = lam * torch.exp(-dist / (2 * SIGMA**2))
    inner = torch.zeros_like(w)
    inner[..., BORDER:-BORDER, BORDER:-BORDER] = 1
    return w * inner


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-channel inner products of (B,C,H,W) tensors: (B,C,1,1)."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))[..., None, None]


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    return dot(x, x).sqrt()


def cg_run(apply, inv_diag: torch.Tensor, r: torch.Tensor, x: torch.Tensor, target: torch.Tensor, budget: int) -> int:
    """Preconditioned CG on A x = b from residual r = b − A x, updating x and r in place; returns iterations run.

    r, x (B,C,H,W); target (B,C,1,1). A channel stops once its updated ‖r‖ ≤ target (its steps become zero).
    In-place updates: each iteration is ~15 passes over the frame, memory-bound on a CPU.
    """
    z = r * inv_diag
    p = z.clone()
    rz = dot(r, z)
    for it in range(budget):
        active = channel_norm(r) > target
        if not active.any():
            return it
        ap = apply(p)
        alpha = torch.where(active, rz / torch.where(active, dot(p, ap), 1), 0)  # no 0/0 in finished channels
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        torch.mul(r, inv_diag, out=z)
        rz_new = dot(r, z)
        p.mul_(torch.where(active, rz_new / torch.where(active, rz, 1), 0)).add_(z)
        rz = rz_new
    return budget


def pcg(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, tol: float, max_iter: int):
    """Solve (L + diag(w)) x = b per channel by Jacobi-preconditioned CG from x, until ‖b − A x‖ ≤ tol ‖b‖.

    w (B,1,H,W) ≥ 0; b, x (B,C,H,W). In float32 the updated residual drifts from the true one, so CG restarts
    from the true residual until that converges, stops improving (float32 rounding floor) or max_iter iterations
    are spent. Returns x, the iterations, and the largest true relative residual over channels (0 for b = 0).
    """
    apply = lambda v: laplacian(v).addcmul_(w, v)
    inv_diag = 1 / (degree(*b.shape[-2:], device=b.device) + w)
    bn = channel_norm(b)
    relative = lambda r: (channel_norm(r) / torch.where(bn > 0, bn, 1)).max().item()
    it, r = 0, b - apply(x)
    rel, last = relative(r), float("inf")
    while it < max_iter and tol < rel < 0.5 * last:
        it += cg_run(apply, inv_diag, r, x, tol * bn, max_iter - it)
        r = b - apply(x)
        rel, last = relative(r), rel
    return x, it, rel


def sum_pool(x: torch.Tensor) -> torch.Tensor:
    """2×2 sums, zero-padding odd sizes: (B,C,H,W) -> (B,C,⌈H/2⌉,⌈W/2⌉)."""
    x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return 4 * F.avg_pool2d(x, 2)


def solve(w: torch.Tensor, b: torch.Tensor, tol: float = 1e-5, max_iter: int = 1000, min_size: int = 16):
    """Solve (L + diag(w)) x = b coarse-to-fine; returns x and the finest level's (iterations, relative residual).

    Summing the equations over 2×2 blocks of a smooth x gives (L_c + sum_pool(w)) x_c = sum_pool(b) on the
    half-size grid (a unit-spacing Laplacian there is 4× the fine one, matching the 4 summed rows).
    """
    h, wd = b.shape[-2:]
    x = torch.zeros_like(b)
    if min(h, wd) >= 2 * min_size:
        xc, _, _ = solve(sum_pool(w), sum_pool(b), tol, max_iter, min_size)
        x = F.interpolate(xc, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :wd].contiguous()
    return pcg(w, b, x, tol, max_iter)


def bonneel_step(p_t: torch.Tensor, target: torch.Tensor, w: torch.Tensor, tol: float = 1e-5, max_iter: int = 1000):
    """O = argmin Σ ‖∇O − ∇P_t‖² + w ‖O − target‖², all (B,C,H,W) but w (B,1,H,W); returns O, iterations, residual."""
    d, iters, rel = solve(w, w * (target - p_t), tol, max_iter)
    return p_t + d, iters, rel


@torch.inference_mode()
def bonneel_frames(flow, pairs, lam: float = 1.0, device="cpu", tol: float = 1e-5, max_iter: int = 1000):
    """O_0 = P_0, then O_t = bonneel_step(P_t, warp(O_{t−1}, F_t), w_t) with F_t = flow(I_t → I_{t−1}).

    pairs yields (I_t, P_t) float32 (H,W,3); yields O_t float32 (H,W,3), unclipped. λ = 0 returns P exactly.
    """
    if not lam >= 0:
        raise UserError(f"bonneel: lambda must be >= 0, got {lam}")
    i_prev = o_prev = None
    for i_np, p_np in pairs:
        i_t, p_t = frames_to_tensor(i_np).to(device), frames_to_tensor(p_np).to(device)
        if o_prev is None or lam == 0:
            o_t = p_t
        else:
            f = flow(i_t, i_prev)
            w = confidence(i_t, warp(i_prev, f), lam)
            o_t, iters, rel = bonneel_step(p_t, warp(o_prev, f), w, tol, max_iter)
            if rel > tol:
                warnings.warn(
                    f"bonneel: relative residual {rel:.1e} > {tol:.0e} after {iters} CG iterations", stacklevel=2
                )
        yield tensor_to_frame(o_t)
        i_prev, o_prev = i_t, o_t
