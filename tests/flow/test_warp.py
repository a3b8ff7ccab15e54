import torch

from tdms.flow.warp import warp


def ramp(h=5, w=7):
    return torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)


def const_flow(u, v, h=5, w=7):
    f = torch.zeros(1, 2, h, w)
    f[:, 0], f[:, 1] = u, v
    return f


def test_integer_shift_and_border_clamp():
    x = ramp()
    out = warp(x, const_flow(2, 0))  # sample two pixels to the right
    assert torch.allclose(out[..., :5], x[..., 2:], atol=1e-4)
    assert torch.allclose(out[..., 5:], x[..., 6:7].expand(-1, -1, -1, 2), atol=1e-4)  # clamped to the last column
    out = warp(x, const_flow(0, -1))  # one row up; row 0 clamps to itself
    assert torch.allclose(out[..., 1:, :], x[..., :-1, :], atol=1e-4)
    assert torch.allclose(out[..., 0, :], x[..., 0, :], atol=1e-4)


def test_hand_computed_bilinear():
    x = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]]).view(1, 1, 2, 3)
    f = torch.zeros(1, 2, 2, 3)
    f[0, 0, 0, 0], f[0, 1, 0, 0] = 0.25, 0.5  # pixel (0,0) samples at x=0.25, y=0.5
    out = warp(x, f)
    top = 0.75 * 1 + 0.25 * 2
    bottom = 0.75 * 8 + 0.25 * 16
    assert abs(out[0, 0, 0, 0].item() - (0.5 * top + 0.5 * bottom)) < 1e-5
    assert abs(out[0, 0, 1, 2].item() - 32.0) < 1e-4  # zero flow elsewhere


def test_far_outside_samples_the_nearest_border_value():
    x = ramp()
    out = warp(x, const_flow(-100, 100))
    assert torch.allclose(out, torch.full_like(x, x[0, 0, -1, 0].item()))


def test_shape_mismatch_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="does not match"):
        warp(ramp(), torch.zeros(1, 2, 4, 7))
