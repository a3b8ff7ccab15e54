"""Flow backends, occlusion/visibility masks, .flo files and the flow cache."""

import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.flow.dis import to_gray_u8
from tdms.flow.flo import read_flo, write_flo
from tdms.flow.occlusion import occlusion_mask, visibility_mask
from tdms.frames.writers import FrameWriter, write_frame

H, W = 96, 128


def shifted_pair(dx: float, dy: float):
    """Crops a, b of the astronaut photo with b(p + d) = a(p), so flow(a -> b) = d everywhere."""
    img = data.astronaut().astype(np.float32) / 255.0
    # warpAffine maps dst(p) = src(p - d) for the translation matrix [1 0 dx; 0 1 dy].
    moved = cv2.warpAffine(
        img, np.float32([[1, 0, dx], [0, 1, dy]]), img.shape[1::-1], flags=cv2.INTER_LINEAR
    )
    y0, x0 = 180, 160
    crop = (slice(y0, y0 + H), slice(x0, x0 + W))
    return img[crop], moved[crop]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy())[None]


def test_gray_is_bt601_luma():
    img = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]])  # (3,1,3): red, green, blue
    # 0.299*255 = 76.2, 0.587*255 = 149.7, 0.114*255 = 29.1
    assert to_gray_u8(img).tolist() == [[76, 150, 29]]


@pytest.mark.parametrize("dx, dy", [(3.0, -2.0), (1.5, 0.75)])
def test_dis_recovers_global_shift(dx, dy):
    a, b = shifted_pair(dx, dy)
    flow = build_flow("dis", "medium")(to_tensor(a), to_tensor(b))
    assert flow.shape == (1, 2, H, W) and flow.dtype == torch.float32
    inner = flow[0, :, 10:-10, 10:-10]
    assert (inner[0] - dx).abs().median() < 0.2
    assert (inner[1] - dy).abs().median() < 0.2


def test_dis_batch_and_name():
    a, b = shifted_pair(2.0, 1.0)
    flow = build_flow("dis", "ultrafast")
    assert flow.name == "dis-ultrafast"
    out = flow(torch.cat([to_tensor(a), to_tensor(b)]), torch.cat([to_tensor(b), to_tensor(a)]))
    assert out.shape == (2, 2, H, W)
    # the backward flow of the second element points the other way
    assert out[0, 0, 10:-10, 10:-10].median() > 1.5 and out[1, 0, 10:-10, 10:-10].median() < -1.5


def test_dis_pickles():
    a, b = shifted_pair(2.0, 1.0)
    flow = build_flow("dis", "fast")
    copy = pickle.loads(pickle.dumps(flow))
    assert copy.name == "dis-fast"
    assert torch.equal(copy(to_tensor(a), to_tensor(b)), flow(to_tensor(a), to_tensor(b)))


@pytest.mark.parametrize("preset", ["ultrafast", "medium"])
def test_dis_is_a_function_of_the_frames(preset):
    """The same pair gives the same flow whatever was computed before (a reused OpenCV solver keeps state: on
    small frames its second answer differed), so cached flows do not depend on the order they were made in."""
    photo = torch.from_numpy(data.astronaut()[100:133, 100:142].astype(np.float32) / 255).permute(2, 0, 1)[None]
    a, b = photo[..., :32, :40], photo[..., 1:33, 2:42]
    flow = build_flow("dis", preset)
    first = flow(a, b)
    flow(b, a)
    assert torch.equal(flow(a, b), first) and torch.equal(build_flow("dis", preset)(a, b), first)


def test_build_flow_errors():
    with pytest.raises(ValueError, match="dis"):
        build_flow("pwc")
    with pytest.raises(ValueError, match="medium"):
        build_flow("dis", "slow")
    with pytest.raises(ValueError, match=">= 12"):
        build_flow()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def const_flow(u: float, v: float, h: int = 20, w: int = 24) -> torch.Tensor:
    flow = torch.zeros(1, 2, h, w)
    flow[:, 0], flow[:, 1] = u, v
    return flow


def test_occlusion_consistent_flows_are_visible():
    occ = occlusion_mask(const_flow(2.0, 1.0), const_flow(-2.0, -1.0))
    assert occ.shape == (1, 1, 20, 24)
    assert occ.sum() == 0


def test_occlusion_where_bw_does_not_invert_fw():
    fw = const_flow(2.0, 0.0)
    bw = const_flow(-2.0, 0.0)
    bw[:, 0, 5:9, 10:14] = 3.0  # in frame t+1: this block maps elsewhere
    occ = occlusion_mask(fw, bw)[0, 0]
    # pixel (y, x) of frame t lands on (y, x + 2): occluded iff that lies in the block
    expected = torch.zeros(20, 24)
    expected[5:9, 8:12] = 1.0
    assert torch.equal(occ, expected)


def test_occlusion_motion_boundary_rule():
    fw = const_flow(0.0, 0.0)
    fw[:, 0, :, 10:] = 0.1  # step in u between columns 9 and 10: |grad u|^2 = 0.01 > 0.002 at column 9
    fw[:, 1, 12:, :] = 0.04  # step in v between rows 11 and 12: 0.0016 < 0.002, not a boundary
    occ = occlusion_mask(fw, -fw)[0, 0]
    expected = torch.zeros(20, 24)
    expected[:, 9] = 1.0  # forward differences: the last column (u 0.1 vs 0.0 at column 0) is not wrapped
    assert torch.equal(occ, expected)
    # the same step on a large motion is no boundary: 0.01 < 0.01 * |fw|^2 + 0.002 = 0.012 at |fw| = 1
    fw[:, 0] += 1.0
    assert occlusion_mask(fw, -fw).sum() == 0


def test_visibility_mask_both_forms():
    img_t = torch.zeros(1, 3, 2, 2)
    warped = torch.zeros(1, 3, 2, 2)
    warped[:, 0], warped[:, 1], warped[:, 2] = -0.1, 0.05, -0.02  # diff = (0.1, -0.05, 0.02)
    v = visibility_mask(img_t, warped)
    assert v.shape == (1, 1, 2, 2)
    assert torch.allclose(v, torch.full_like(v, np.exp(-50 * 0.07**2)))
    v2 = visibility_mask(img_t, warped, alpha=10.0, squared_norm=True)
    assert torch.allclose(v2, torch.full_like(v2, np.exp(-10 * (0.01 + 0.0025 + 0.0004))))


def test_flo_round_trip_and_independent_bytes(tmp_path):
    flow = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    path = tmp_path / "a.flo"
    write_flo(path, flow)
    assert np.array_equal(read_flo(path), flow)
    # the same file written by hand: magic, width, height, then u,v interleaved per pixel row by row
    raw = struct.pack("<f", 202021.25) + struct.pack("<ii", 4, 3)
    for y in range(3):
        for x in range(4):
            raw += struct.pack("<ff", flow[0, y, x], flow[1, y, x])
    assert path.read_bytes() == raw
    (tmp_path / "b.flo").write_bytes(raw)
    assert np.array_equal(read_flo(tmp_path / "b.flo"), flow)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flo", "b.flo"]  # no temp files left


@pytest.mark.parametrize(
    "raw, message",
    [
        (struct.pack("<fii", 1.0, 2, 2) + bytes(32), "magic"),
        (struct.pack("<fii", 202021.25, 2, 2) + bytes(20), "truncated"),
        (struct.pack("<fii", 202021.25, -1, 2), "absurd"),
        (struct.pack("<fii", 202021.25, 10**9, 10**9), "absurd"),
        (b"PIEH", "bytes"),
    ],
)
def test_flo_bad_files(tmp_path, raw, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as err:
        read_flo(path)
    assert str(path) in str(err.value)


class CountingFlow:
    """A real DIS backend that counts its calls."""

    def __init__(self):
        self.inner = build_flow("dis", "ultrafast")
        self.name = self.inner.name
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        return self.inner(a, b)


@pytest.fixture
def video(tmp_path):
    folder = tmp_path / "clips" / "astro"
    for i in range(3):
        write_frame(folder / f"{i:05d}.png", shifted_pair(2.0 * i, -1.0 * i)[1])
    return folder


def test_cache_computes_once_and_reads_back(tmp_path, video):
    backend = CountingFlow()
    cache = FlowCache(tmp_path / "cache", backend)
    fw, bw, occ = cache.pair(video, 1)
    assert backend.calls == 1
    assert fw.shape == bw.shape == (2, H, W) and occ.shape == (1, H, W)
    folder = next((tmp_path / "cache" / "dis-ultrafast").iterdir())
    assert folder.name.startswith("clips_astro-")
    assert sorted(p.name for p in folder.iterdir()) == ["bw_00001.flo", "fw_00001.flo", "occ_00001.png"]
    assert torch.equal(occ[None], occlusion_mask(fw[None], bw[None]))
    assert abs(fw[0, 20:-20, 20:-20].median() - 2.0) < 0.3 and abs(bw[0, 20:-20, 20:-20].median() + 2.0) < 0.3

    again = FlowCache(tmp_path / "cache", backend).pair(video, 1)
    assert backend.calls == 1
    for x, y in zip(again, (fw, bw, occ), strict=True):
        assert torch.equal(x, y)
    with pytest.raises(IndexError, match="3 frames"):
        cache.pair(video, 2)


def test_cache_recomputes_corrupt_files(tmp_path, video):
    backend = CountingFlow()
    cache = FlowCache(tmp_path / "cache", backend)
    fw, _, occ = cache.pair(video, 0)
    fw_path, _, occ_path = cache.paths(video, 0)
    fw_path.write_bytes(fw_path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupt"):
        fw2, _, _ = cache.pair(video, 0)
    assert backend.calls == 2 and torch.equal(fw2, fw) and read_flo(fw_path).shape == (2, H, W)
    occ_path.write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="corrupt"):
        _, _, occ2 = cache.pair(video, 0)
    assert backend.calls == 2 and torch.equal(occ2, occ)  # occlusion comes from the cached flows


def test_cache_prepare_skips_complete_pairs(tmp_path, video):
    backend = CountingFlow()
    cache = FlowCache(tmp_path / "cache", backend)
    cache.pair(video, 0)
    cache.prepare(video, progress=False)
    assert backend.calls == 2
    assert all(p.exists() for p in cache.paths(video, 1))
    cache.prepare(video, progress=False)
    assert backend.calls == 2


def test_cache_on_a_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    with FrameWriter(path) as writer:
        for i in range(3):
            writer.write(shifted_pair(2.0 * i, 0.0)[1])
    backend = CountingFlow()
    cache = FlowCache(tmp_path / "cache", backend)
    cache.prepare(path, progress=False)  # decodes the video once, in order
    assert backend.calls == 2
    fw, _, _ = cache.pair(path, 1)
    assert backend.calls == 2 and abs(fw[0, 20:-20, 20:-20].median() - 2.0) < 0.3
    with FrameWriter(path, overwrite=True) as writer:  # the same name and length, the scene moving left
        for i in range(3):
            writer.write(shifted_pair(-2.0 * i, 0.0)[1])
    fw, _, _ = FlowCache(tmp_path / "cache", backend).pair(path, 1)
    assert backend.calls == 3 and abs(fw[0, 20:-20, 20:-20].median() + 2.0) < 0.3


def test_cache_forward_reads_fw_and_occlusion_only(tmp_path, video):
    backend = CountingFlow()
    cache = FlowCache(tmp_path / "cache", backend)
    fw, _, occ = cache.pair(video, 0)
    _, bw_path, occ_path = cache.paths(video, 0)
    bw_path.unlink()  # forward() does not need it while the occlusion file is there
    fw2, occ2 = cache.forward(video, 0)
    assert backend.calls == 1 and torch.equal(fw2, fw) and torch.equal(occ2, occ)
    occ_path.unlink()  # no occlusion and no bw: the pair is computed again
    fw3, occ3 = cache.forward(video, 0)
    assert backend.calls == 2 and torch.equal(fw3, fw) and torch.equal(occ3, occ) and bw_path.exists()


def test_cache_recomputes_frames_changed_in_place(tmp_path, video):
    backend = CountingFlow()
    fw, _, _ = FlowCache(tmp_path / "cache", backend).pair(video, 0)
    assert abs(fw[0, 20:-20, 20:-20].median() - 2.0) < 0.3
    for i in range(3):  # same names, count and size; mirrored, the scene moves left
        write_frame(video / f"{i:05d}.png", shifted_pair(2.0 * i, -1.0 * i)[1][:, ::-1])
    cache = FlowCache(tmp_path / "cache", backend)
    fw, _, _ = cache.pair(video, 0)
    assert backend.calls == 2 and abs(fw[0, 20:-20, 20:-20].median() + 2.0) < 0.3
    cache.prepare(video, progress=False)  # pair 1 of the new frames is missing, pair 0 is there
    assert backend.calls == 3
    assert FlowCache(tmp_path / "cache", backend).pair(video, 1)[0].shape == (2, H, W) and backend.calls == 3
