import pytest
import torch
import torch.nn.functional as F

from tdms.training import losses as L


@pytest.fixture
def vgg_file(tmp_path, monkeypatch):
    """A VGG16 file in torchvision's format (random weights; features only, as the loss reads)."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / L.VGG16_FILE
    path.parent.mkdir(parents=True)
    torch.save({k: v for k, v in vgg16().state_dict().items() if k.startswith("features.")}, path)
    return path


def test_vgg_from_torchvision_cache_and_perceptual_loss(vgg_file):
    assert L.vgg16_weights_path() == vgg_file
    vgg = L.VGGFeatures(vgg_file)
    x = torch.rand(1, 3, 32, 32)
    feats = vgg(x)
    assert feats[0].shape == (1, 512, 4, 4)  # relu4_3: 3 poolings
    assert feats[0].min() >= 0
    state = torch.load(vgg_file)
    normed = (x - torch.tensor(L.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(L.IMAGENET_STD).view(1, 3, 1, 1)
    by_hand = F.conv2d(normed, state["features.0.weight"], state["features.0.bias"], padding=1).relu()
    assert torch.allclose(vgg.features[:2]((x - vgg.mean) / vgg.std), by_hand, atol=1e-5)
    assert L.perceptual_loss(vgg, x, x).item() == 0
    y = x.clone().requires_grad_(True)
    loss = L.perceptual_loss(vgg, y, torch.rand(1, 3, 32, 32))
    loss.backward()
    assert loss > 0 and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in vgg.parameters())


def test_missing_or_wrong_vgg_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af.pth[\s\S]*loss.perceptual=0"):
        L.vgg16_weights_path()
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="expected torchvision.s ImageNet VGG16 weights"):
        L.VGGFeatures(bad)


def test_masked_temporal_and_mask_losses_by_hand():
    o = torch.zeros(1, 3, 2, 2)
    target = torch.ones(1, 3, 2, 2)
    vis = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    assert L.temporal_loss(o, target, vis).item() == pytest.approx(0.25)  # one visible pixel of four
    assert L.mask_loss(torch.full((1, 3, 2, 2), 0.5), vis).item() == pytest.approx(0.5)


def test_flow_cycle_loss_by_hand_and_its_gradient():
    """With the 'flow' b - a (first two channels), the term is mean |(O_t - O_{t-1}) - (I_t - I_{t-1})|."""
    def flow(a, b):
        return (b - a)[:, :2]

    g = torch.Generator().manual_seed(0)
    i_prev, i_t, o_prev, o_t = (torch.rand(2, 3, 4, 5, generator=g, requires_grad=True) for _ in range(4))
    loss = L.flow_cycle_loss(flow, i_prev, i_t, o_prev, o_t)
    expect = ((o_t - o_prev) - (i_t - i_prev))[:, :2].abs().mean()
    assert loss.item() == pytest.approx(expect.item())
    loss.backward()
    assert o_t.grad[:, :2].abs().sum() > 0 and o_t.grad[:, 2].abs().sum() == 0
    assert o_prev.grad is None and i_prev.grad is None and i_t.grad is None  # detached / fixed target


def test_l1_mask_loss_learns_the_median_and_l2_the_mean():
    from tdms.training.losses import mask_loss

    # one free mask value against a target that is 1 at 70 % of the pixels and 0 elsewhere
    target = (torch.arange(100.0) < 70).float().view(1, 1, 10, 10)
    for norm, expected in (("l1", 1.0), ("l2", 0.7)):
        m = torch.full((1, 1, 1, 1), 0.5, requires_grad=True)
        opt = torch.optim.SGD([m], lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            mask_loss(m.expand(1, 3, 10, 10), target, norm).backward()
            opt.step()
        assert abs(m.item() - expected) < 0.02, (norm, m.item())


def test_balanced_mask_loss_weighs_occluded_pixels_as_much_as_the_rest():
    from tdms.training.losses import mask_loss

    target = torch.ones(1, 1, 10, 10)
    target.view(-1)[:5] = 0.1  # 5 % occluded
    occluded = target < 0.5
    mask = torch.full((1, 3, 10, 10), 0.9)
    err = (mask - target).abs()
    assert mask_loss(mask, target, "l1", occluded).item() == pytest.approx(
        0.5 * err[occluded.expand_as(err)].mean().item() + 0.5 * err[~occluded.expand_as(err)].mean().item())
    # one kind only: a plain mean, not half of it
    none = torch.zeros_like(occluded)
    assert mask_loss(mask, target, "l1", none).item() == pytest.approx(mask_loss(mask, target, "l1").item())
    assert mask_loss(mask, target, "l2", ~none).item() == pytest.approx(mask_loss(mask, target, "l2").item())
    # the gradient: the 5 % occluded pixels pull as hard in total as the 95 % visible ones (plain L1: 5 to 95)
    for occ, share in ((None, 0.05), (occluded, 0.5)):
        m = mask.clone().requires_grad_()
        mask_loss(m, target, "l1", occ).backward()
        g = m.grad.abs()
        assert g[occluded.expand_as(g)].sum() / g.sum() == pytest.approx(share)

