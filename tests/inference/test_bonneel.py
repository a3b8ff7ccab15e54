import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tdms.inference.bonneel import bonneel_frames, bonneel_step, solve
from tests.conftest import flicker, moving_frames


class ShiftFlow:
    """The exact flow of a pan by `dx` px per frame: I_t(p) = I_{t-1}(p - dx), so flow(I_t -> I_{t-1}) = (-dx, 0)."""

    def __init__(self, dx=0):
        self.dx = dx
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        f = torch.zeros(a.shape[0], 2, *a.shape[2:], device=a.device)
        f[:, 0] = -self.dx
        return f


def shift_np(x, dx):
    """warp(x, (-dx, 0)) for integer dx in numpy: x sampled at column max(col - dx, 0) (border clamp)."""
    cols = np.maximum(np.arange(x.shape[1]) - dx, 0)
    return x[:, cols]


def gradient_matrix(h, w):
    """Sparse G (edges × pixels): one row o_i - o_j per horizontal and vertical 4-neighbour pair."""
    idx = np.arange(h * w).reshape(h, w)
    i = np.concatenate([idx[:, :-1].ravel(), idx[:-1].ravel()])
    j = np.concatenate([idx[:, 1:].ravel(), idx[1:].ravel()])
    rows = np.arange(len(i))
    return sp.csr_matrix(
        (np.r_[np.ones(len(i)), -np.ones(len(i))], (np.r_[rows, rows], np.r_[i, j])), shape=(len(i), h * w)
    )


def dense_bonneel(p, t, w):
    """argmin_O Σ_edges ((O_i − O_j) − (P_i − P_j))² + Σ w (O − T)², each channel by numpy.linalg.solve."""
    h, wd = w.shape
    g = gradient_matrix(h, wd).toarray()
    a = g.T @ g + np.diag(w.ravel().astype(np.float64))
    out = np.empty(p.shape)
    for c in range(3):
        rhs = g.T @ g @ p[..., c].ravel() + w.ravel() * t[..., c].ravel()
        out[..., c] = np.linalg.solve(a, rhs).reshape(h, wd)
    return out


def numpy_weight(i_t, i_warped, lam):
    w = lam * np.exp(-((i_t - i_warped) ** 2).sum(-1) / (2 * 0.05**2))
    w[:2], w[-2:], w[:, :2], w[:, -2:] = 0, 0, 0, 0
    return w


# 33×35 also runs one coarse level (odd sizes); its dense solve takes ~5 s
@pytest.mark.parametrize("size", [(7, 9), pytest.param((33, 35), marks=pytest.mark.slow)])
def test_matches_dense_normal_equations_over_a_sequence(size):
    h, w = size
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, (h, w + 4, 3))
    ins = [(base[:, 4 - t : 4 - t + w] + rng.normal(0, 0.04, (h, w, 3))).astype(np.float32) for t in range(3)]
    procs = [rng.uniform(0, 1, (h, w, 3)).astype(np.float32) for _ in range(3)]
    outs = list(bonneel_frames(ShiftFlow(1), zip(ins, procs, strict=True), lam=2.0, tol=1e-6))
    expected = procs[0].astype(np.float64)
    assert np.array_equal(outs[0], procs[0])
    for t in (1, 2):
        wt = numpy_weight(ins[t], shift_np(ins[t - 1], 1), 2.0)
        assert 0.01 < wt[2:-2, 2:-2].mean() < 1.9  # the weights really vary
        expected = dense_bonneel(procs[t], shift_np(expected, 1), wt)
        assert np.abs(outs[t] - expected).max() < 1e-4


def test_lambda_zero_returns_p_exactly():
    rng = np.random.default_rng(2)
    ins = [rng.uniform(0, 1, (20, 24, 3)).astype(np.float32) for _ in range(4)]
    procs = [rng.uniform(-0.1, 1.1, (20, 24, 3)).astype(np.float32) for _ in range(4)]
    flow = ShiftFlow()
    outs = list(bonneel_frames(flow, zip(ins, procs, strict=True), lam=0.0))
    assert flow.calls == 0  # no flow needed
    assert len(outs) == 4 and all(np.array_equal(o, p) for o, p in zip(outs, procs, strict=True))


def test_zero_weight_is_solved_exactly_by_p():
    # L + diag(0) is singular; the right side w·(T − P) is then zero, so the solver must return P itself.
    p, target = torch.rand(1, 3, 40, 50), torch.rand(1, 3, 40, 50)
    o, iters, rel = bonneel_step(p, target, torch.zeros(1, 1, 40, 50))
    assert torch.equal(o, p) and iters == 0 and rel == 0


def test_constant_frames_follow_the_previous_output():
    # P_t = c_t, target = a: O = a everywhere (border too: the border band keeps zero gradient).
    p, target = torch.full((1, 3, 70, 90), 0.3), torch.full((1, 3, 70, 90), 0.7)
    w = torch.zeros(1, 1, 70, 90)
    w[..., 2:-2, 2:-2] = 1.0
    o, _, rel = bonneel_step(p, target, w)
    assert rel < 1e-5 and torch.allclose(o, target, atol=1e-4)


def test_huge_lambda_on_a_static_scene_freezes_the_first_frame():
    still = moving_frames(n=1, h=30, w=36)[0]
    procs = flicker([still] * 4, amount=0.1, seed=3)
    outs = list(bonneel_frames(ShiftFlow(0), zip([still] * 4, procs, strict=True), lam=1e6))
    for o, p in zip(outs[1:], procs[1:], strict=True):
        assert np.abs(o - procs[0])[2:-2, 2:-2].max() < 1e-3  # O_t = O_{t-1} = P_0 where w = λ
        assert np.abs(p - procs[0])[2:-2, 2:-2].max() > 0.02  # while P itself flickers


def test_residual_below_tolerance_on_a_random_problem():
    rng = np.random.default_rng(4)
    h, wd = 70, 90  # two coarse levels
    w = rng.uniform(0, 1.5, (h, wd)).astype(np.float32)
    w[10:50, 20:70] = 0  # a large occluded region: the hard case for plain CG
    b = (w * rng.normal(0, 0.1, (3, h, wd))).astype(np.float32)
    x, iters, rel = solve(torch.from_numpy(w)[None, None], torch.from_numpy(b)[None], tol=1e-5)
    g = gradient_matrix(h, wd)
    a = (g.T @ g + sp.diags(w.ravel().astype(np.float64))).tocsc()
    for c in range(3):
        xc = x[0, c].double().numpy().ravel()
        true_rel = np.linalg.norm(b[c].ravel() - a @ xc) / np.linalg.norm(b[c])
        assert true_rel < 1e-5 and true_rel <= rel * 1.01
        exact = sp.linalg.spsolve(a, b[c].ravel().astype(np.float64))
        assert np.abs(xc - exact).max() < 1e-3
    assert 0 < iters < 300


def test_reduces_flicker_on_a_moving_photo():
    ins = moving_frames(n=8, h=48, w=64, shift=2)
    procs = flicker(ins, amount=0.1, seed=5)
    flow = ShiftFlow(2)
    outs = list(bonneel_frames(flow, zip(ins, procs, strict=True), lam=1.0))
    assert flow.calls == 7

    def temporal_error(frames):  # mean squared change after motion compensation, columns warp did not clamp
        pairs = zip(frames, frames[1:], strict=False)
        return np.mean([((f[:, 2:] - shift_np(g, 2)[:, 2:]) ** 2).mean() for g, f in pairs])

    e_p, e_o = temporal_error(procs), temporal_error(outs)
    assert e_o < 0.01 * e_p  # measured: 0.0090 -> 0.00002
    # fidelity: the output keeps P's gradients (the texture), only the flicker goes
    gp, go = np.diff(np.array(procs), axis=2), np.diff(np.array(outs), axis=2)
    assert np.abs(go - gp).mean() < 0.1 * np.abs(gp).mean()  # measured: 0.044


def test_rejects_negative_lambda():
    with pytest.raises(ValueError, match="lambda"):
        next(bonneel_frames(ShiftFlow(), iter([]), lam=-1.0), None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    ins = moving_frames(n=4, h=40, w=48)
    procs = flicker(ins, seed=6)
    cpu = list(bonneel_frames(ShiftFlow(1), zip(ins, procs, strict=True)))
    gpu = list(bonneel_frames(ShiftFlow(1), zip(ins, procs, strict=True), device="cuda"))
    assert all(np.abs(a - b).max() < 1e-4 for a, b in zip(cpu, gpu, strict=True))
