"""The Python API (tdms/api.py) and the torch.hub entry (hubconf.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import tdms
from tdms import api
from tdms.config import Config, to_dict
from tdms.evaluation.video import evaluate_video
from tdms.files import save_atomic
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.frames.io import FrameSource, read_frame
from tdms.nets.tdms_net import TDMSNet
from tests.conftest import flicker, moving_frames, write_video

REPO = Path(__file__).resolve().parents[1]
T, H, W = 4, 32, 40  # multiples of 4: the hand-made recurrence below needs no padding


def save_ckpt(path, seed=0):
    torch.manual_seed(seed)
    cfg = Config()
    cfg.model.nf = 8
    save_atomic({"format": "tdms", "model": TDMSNet(nf=8).state_dict(), "config": to_dict(cfg)}, path)
    return path


@pytest.fixture
def ckpt(tmp_path):
    return save_ckpt(tmp_path / "w.pth")


@pytest.fixture
def model(ckpt):
    return tdms.load_model(ckpt)


@pytest.fixture
def clip():
    """(I, P) float32 (T,H,W,3): a real photo panning 1 px per frame, and a flickering version of it."""
    ins = moving_frames(n=T, h=H, w=W)
    return np.stack(ins), np.stack(flicker(ins)).astype(np.float32)


def u8(x):
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def by_hand(model, ins, procs):
    """O_0 = P_0, O_t = model(I_{t-1}, I_t, O_{t-1}, P_t) by direct calls; float (H,W,3), unclipped."""
    def t(f):
        return torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1), dtype=np.float32))[None]

    outs = [t(procs[0])]
    with torch.no_grad():
        for k in range(1, len(ins)):
            outs.append(model(t(ins[k - 1]), t(ins[k]), outs[-1], t(procs[k]))["output"])
    return np.stack([o[0].permute(1, 2, 0).numpy() for o in outs])


def zero_flow(a, b):
    return torch.zeros(a.shape[0], 2, *a.shape[2:])


# --- load_model ---------------------------------------------------------------------------------------------


def test_load_model_by_path_name_and_default(tmp_path, ckpt, monkeypatch):
    m = tdms.load_model(ckpt)
    assert isinstance(m, TDMSNet) and not m.training
    assert torch.equal(m.conv1a.conv2d.weight, torch.load(ckpt)["model"]["conv1a.conv2d.weight"])
    folder = tmp_path / "checkpoints"
    monkeypatch.setattr(api, "CHECKPOINTS", folder)
    save_ckpt(folder / "tdms_offline.pth", seed=1)
    save_ckpt(folder / "other.pth", seed=2)
    want = {n: torch.load(folder / f"{n}.pth")["model"]["conv3.conv2d.weight"] for n in ("tdms_offline", "other")}
    assert torch.equal(tdms.load_model().conv3.conv2d.weight, want["tdms_offline"])
    assert torch.equal(tdms.load_model("tdms_offline").conv3.conv2d.weight, want["tdms_offline"])
    assert torch.equal(tdms.load_model("other").conv3.conv2d.weight, want["other"])


def test_load_model_reads_the_released_format(tmp_path):
    torch.manual_seed(3)
    ref = TDMSNet(nf=8, original_quirks=True)
    torch.save({"model": ref.state_dict()}, tmp_path / "model_pf_epoch_65.pth")
    m = tdms.load_model(tmp_path / "model_pf_epoch_65.pth")
    assert m.original_quirks and torch.equal(m.deconv3_f.conv2d.weight, ref.deconv3_f.conv2d.weight)


def test_missing_checkpoint_names_the_path_and_lists_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setattr(api, "CHECKPOINTS", folder)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint files") as err:
        tdms.load_model()
    assert str(folder / "tdms_offline.pth") in str(err.value)
    for name in ("b.pth", "a.pt", "README.md"):
        (folder / name).write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        tdms.load_model(tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(err.value) and "holds a.pt, b.pth)" in str(err.value)


# --- stabilize: kinds in, same kind out ------------------------------------------------------------------------


def test_a_folder_or_random_bytes_as_checkpoint_say_so(tmp_path):
    """No "not found" for a folder, and no torch advice to retry with weights_only=False for a random file."""
    with pytest.raises(ValueError, match="a folder, not a checkpoint file"):
        tdms.load_model(tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=f"{junk}: not a readable PyTorch weights file") as err:
        tdms.load_model(junk)
    assert "weights_only" not in str(err.value)


def test_uint8_arrays_follow_the_recurrence_exactly(clip, model):
    i8, p8 = u8(clip[0]), u8(clip[1])
    out = tdms.stabilize(i8, p8, model=model, amp="fp32")
    want = by_hand(model, i8 / 255.0, p8 / 255.0)
    assert out.dtype == np.uint8 and out.shape == (T, H, W, 3)
    assert np.array_equal(out[0], p8[0])
    assert np.abs(out.astype(int) - u8(want)).max() <= 1  # float32 rounding may flip a .5 boundary
    assert (out != p8).mean() > 0.5  # the model really ran


def test_float_and_tensor_clips_come_back_in_their_kind(clip, model):
    want = np.clip(by_hand(model, *clip), 0, 1)
    out64 = tdms.stabilize(clip[0].astype(np.float64), clip[1].astype(np.float64), model=model, amp="fp32")
    assert out64.dtype == np.float64 and np.allclose(out64, want, atol=1e-5)
    ti, tp = (torch.from_numpy(c).permute(0, 3, 1, 2) for c in clip)
    out_t = tdms.stabilize(ti, tp, model=model, amp="fp32")
    assert out_t.dtype == torch.float32 and out_t.shape == (T, 3, H, W) and not out_t.is_inference()
    assert np.allclose(out_t.permute(0, 2, 3, 1).numpy(), want, atol=1e-5)
    out_u8 = tdms.stabilize((ti * 255).round().byte(), (tp * 255).round().byte(), model=model, amp="fp32")
    assert out_u8.dtype == torch.uint8 and out_u8.shape == (T, 3, H, W)
    as_list = tdms.stabilize(list(clip[0]), iter(clip[1]), model=model, amp="fp32")
    assert isinstance(as_list, list) and np.allclose(np.stack(as_list), want, atol=1e-5)


def test_paths_in_array_or_files_out(clip, model, tmp_path):
    i8, p8 = u8(clip[0]), u8(clip[1])
    fi, fp = write_video(tmp_path / "I", list(i8 / 255.0)), write_video(tmp_path / "P", list(p8 / 255.0))
    out = tdms.stabilize(fi, fp, model=model, amp="fp32")
    same = tdms.stabilize(i8 / 255.0, p8 / 255.0, model=model, amp="fp32")
    assert out.dtype == np.float32 and np.allclose(out, same, atol=1e-6)
    folder = tdms.stabilize(str(fi), fp, model=model, amp="fp32", output=tmp_path / "O")
    assert folder == tmp_path / "O" and np.allclose(np.stack(list(FrameSource(folder))), out, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="already exists"):
        tdms.stabilize(fi, fp, model=model, output=folder)
    assert tdms.stabilize(fi, fp, method="identity", output=folder, overwrite=True) == folder
    assert np.array_equal(read_frame(folder / "00002.png"), read_frame(fp / "00002.png"))
    with pytest.raises(ValueError, match="is the input itself"):
        tdms.stabilize(fi, fp, model=model, output=fp, overwrite=True)
    video = tdms.stabilize(i8, p8, model=model, amp="fp32", output=tmp_path / "o.mp4")
    assert len(FrameSource(video)) == T and FrameSource(video).size == (H, W)


def test_other_methods(clip):
    p8 = u8(clip[1])
    assert np.array_equal(tdms.stabilize(u8(clip[0]), p8, method="identity"), p8)
    assert np.array_equal(tdms.stabilize(clip[0], clip[1], method="bonneel", lam=0.0), clip[1])
    naive = tdms.stabilize(clip[0], clip[1], method="naive", flow=zero_flow)  # O_t = (P_t + O_{t-1}) / 2
    assert np.allclose(naive[1], (clip[1][0] + clip[1][1]) / 2, atol=1e-6)
    assert np.allclose(naive[2], clip[1][2] / 2 + naive[1] / 2, atol=1e-6)
    with pytest.raises(ValueError, match="model= is for method='tdms'"):
        tdms.stabilize(clip[0], clip[1], method="naive", model="x.pth")
    with pytest.raises(ValueError, match="unknown method 'lai'"):
        tdms.stabilize(clip[0], clip[1], method="lai")


# --- stabilize_iter -------------------------------------------------------------------------------------------


def test_iter_streams_lazily_and_leaves_autograd_alone(clip, model):
    read = []

    def processed():
        for k, f in enumerate(clip[1]):
            read.append(k)
            yield f

    frames = tdms.stabilize_iter(clip[0], processed(), model=model, amp="fp32")
    assert read == [0, 1]  # the call reads two frames (to check T >= 2), no more
    first = next(frames)
    assert np.array_equal(first, clip[1][0]) and read == [0, 1]
    x = torch.ones(2, requires_grad=True)
    assert (x * 2).sum().requires_grad and not torch.is_inference_mode_enabled()  # not left in inference mode
    rest = list(frames)
    assert read == [0, 1, 2, 3] and len(rest) == T - 1
    assert np.allclose(np.stack([first, *rest]), np.clip(by_hand(model, *clip), 0, 1), atol=1e-5)


def test_iter_with_files_and_a_generator_of_tensors(clip, model, tmp_path):
    fi = write_video(tmp_path / "I", list(clip[0]))
    tensors = (torch.from_numpy(f).permute(2, 0, 1) for f in clip[1])
    frames = list(tdms.stabilize_iter(fi, tensors, model=model, amp="fp32"))
    assert all(torch.is_tensor(f) and f.shape == (3, H, W) for f in frames)


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda i, p: (i.transpose(0, 3, 1, 2), p),
         r"original: shape \(4, 3, 32, 40\) looks channel-first \(T,3,H,W\); pass \(T,H,W,3\)"),
        (lambda i, p: (torch.from_numpy(i), torch.from_numpy(p)), r"looks channel-last \(T,H,W,3\); pass \(T,3,H,W\)"),
        (lambda i, p: (u8(i), p), "dtypes differ: original uint8, processed float"),
        (lambda i, p: (i * 255, p * 255), r"float values must lie in \[0, 1\].*max 2\d\d.*divide by 255"),
        (lambda i, p: (i, np.where(p > 0.5, np.nan, p)), "NaN"),
        (lambda i, p: (i[:1], p[:1]), r"original: T = 1; temporal consistency needs T >= 2"),
        (lambda i, p: (i[:0], p[:0]), r"original: T = 0; temporal consistency needs T >= 2"),
        (lambda i, p: (list(i[:1]), list(p[:1])), r"original: 1 frame\(s\); temporal consistency needs T >= 2"),
        (lambda i, p: (i[0], p[0]), "one frame"),
        (lambda i, p: (i, p[:3]), "frame counts differ: original 4, processed 3"),
        (lambda i, p: (i, p[:, :28]), r"sizes differ: original 40×32 \(W×H\), processed 40×28 \(W×H\)"),
        (lambda i, p: (i[..., 0], p[..., 0]), r"expected \(T,H,W,3\), got shape \(4, 32, 40\); a grayscale clip"),
        (lambda i, p: (i[..., :1], p[..., :1]), "make grayscale or RGBA frames RGB"),
        (lambda i, p: (i.astype(np.int64), p), "dtype int64 is not taken"),
        (lambda i, p: (i[:2], [p[0], p[1] * 255]), r"processed frame 1: float values must lie in \[0, 1\]"),
        (lambda i, p: (i[:2], [p[0], u8(p[1])]), "processed frame 1: uint8 but frame 0 is float"),
        (lambda i, p: (i, 3), "expected an array, tensor, path or iterable of frames, got int"),
    ],
)
def test_bad_input_is_a_clear_value_error(clip, model, make, message):
    with pytest.raises(ValueError, match=message):
        tdms.stabilize(*make(*clip), model=model)


def test_bad_input_fails_at_the_call_and_ragged_generators_when_they_end(clip, model, tmp_path):
    with pytest.raises(ValueError, match="T >= 2"):
        tdms.stabilize_iter(clip[0][:1], iter(clip[1][:1]), model=model)  # before any iteration
    frames = tdms.stabilize_iter(iter(clip[0]), iter(clip[1][:3]), model=model)
    with pytest.raises(ValueError, match="frame counts differ: processed ended after 3 frames, original did not"):
        list(frames)
    with pytest.raises(FileNotFoundError, match="nope"):
        tdms.stabilize(tmp_path / "nope", clip[1], model=model)
    with pytest.raises(ValueError, match="the model is on cpu but device='cuda'"):
        tdms.stabilize(*clip, model=model, device="cuda")
    fi, fp = (write_video(tmp_path / name, list(c)) for name, c in (("I", clip[0]), ("P", clip[1])))
    (fp / "00001.png").rename(fp / f"{len(clip[1]):05d}.png")  # P's frame 1 missing, one more at the end
    with pytest.raises(ValueError, match="frame numbers do not pair up"):
        tdms.stabilize(fi, fp, model=model)


# --- metrics ------------------------------------------------------------------------------------------------


def test_warping_error_with_a_known_flow_is_the_mean_squared_frame_difference(clip):
    out = clip[1]
    # zero flow: nothing occluded, warp is the identity, so E_t = mean((O_t - O_{t-1})^2) over pixels and channels
    want = np.mean([np.mean((out[k].astype(np.float64) - out[k - 1]) ** 2) for k in range(1, T)])
    assert tdms.warping_error(out, clip[0], flow=zero_flow) == pytest.approx(want, rel=1e-6)  # warp runs in fp32
    assert tdms.warping_error(u8(out), u8(clip[0]), flow=zero_flow) == pytest.approx(want, rel=0.05)
    with pytest.raises(ValueError, match="needs T >= 2"):
        tdms.warping_error(out[:1], clip[0][:1])


def test_scores_match_tdms_evaluate_on_the_same_frames(clip, model, tmp_path):
    i, p = u8(clip[0]) / 255.0, u8(clip[1]) / 255.0  # 8-bit values: PNG files hold them exactly
    o = u8(tdms.stabilize(i, p, model=model, amp="fp32")) / 255.0
    folders = [write_video(tmp_path / name, list(c)) for name, c in (("I", i), ("O", o), ("P", p))]
    ref = evaluate_video(FlowCache(tmp_path / "cache", build_flow("dis")), *folders, progress=False)
    got = tdms.scores(o, i, p)
    for key in ("warping_error", "warping_error_processed", "relative_reduction", "psnr", "ssim"):
        assert got[key] == pytest.approx(ref[key], rel=1e-9), key
    d_t = max(0.0, 1 - got["warping_error"] / got["warping_error_processed"])
    assert got["relative_reduction"] == pytest.approx(d_t)
    assert got["composite"] is None and "lpips" in got["composite_note"]
    assert tdms.warping_error(folders[1], folders[0]) == pytest.approx(ref["warping_error"], rel=1e-9)
    assert tdms.relative_reduction(0.002, 0.004) == 0.5
    with pytest.raises(ValueError, match="pass processed="):
        tdms.scores(o, i, lpips=object())


def test_an_api_output_on_a_full_disk_or_a_read_only_folder(clip, tmp_path, monkeypatch):
    """stabilize(output=...) shares tdms-test's writer: one-line errors, the earlier output left as it was."""
    import errno
    import os
    import tempfile

    from tdms.frames import outputs, writers

    out = tmp_path / "O"
    tdms.stabilize(*clip, method="identity", output=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(writers, "write_bytes_atomic", full)
        with pytest.raises(ValueError, match=r"^no space left on device: .*\.O\.partial/00000\.png"):
            tdms.stabilize(*clip, method="identity", output=out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", refused)
        with pytest.raises(ValueError, match=f"cannot write in {tmp_path}: Permission denied"):
            tdms.stabilize(*clip, method="identity", output=tmp_path / "new")
    assert not (tmp_path / "new").exists() and outputs.read_marker(out)["frames"] == len(clip[0])


# --- torch.hub ----------------------------------------------------------------------------------------------


def test_torch_hub_loads_from_the_local_clone(ckpt, clip):
    m = torch.hub.load(str(REPO), "tdms", source="local", checkpoint=str(ckpt))
    assert isinstance(m, TDMSNet) and not m.training
    assert torch.equal(m.conv1b.conv2d.weight, torch.load(ckpt)["model"]["conv1b.conv2d.weight"])
    assert np.allclose(tdms.stabilize(*clip, model=m, amp="fp32"), np.clip(by_hand(m, *clip), 0, 1), atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_stay_on_the_gpu(ckpt, clip):
    m = tdms.load_model(ckpt, device="cuda")
    ti, tp = (torch.from_numpy(c).permute(0, 3, 1, 2).cuda() for c in clip)
    out = tdms.stabilize(ti, tp, model=m, amp="fp32")
    assert out.is_cuda and out.dtype == torch.float32
    assert np.allclose(out.permute(0, 2, 3, 1).cpu().numpy(), tdms.stabilize(*clip, model=ckpt, amp="fp32"), atol=1e-4)
    half = tdms.stabilize(ti, tp, model=m, amp="bf16")
    assert (half - out).abs().max() < 0.05


def test_the_recurrence_restarts_at_a_scene_cut(model):
    """Two real shots joined: the output is each shot's recurrence on its own (O = P at the cut), as by hand."""
    from tests.frames.videos import real_shot

    shots = real_shot("bigbuckbunny.mp4", 3, size=(W, H)) + real_shot("carphone_pristine.mp4", 3, size=(W, H))
    ins = np.stack(shots).astype(np.float32) / 255
    procs = np.stack(flicker(list(ins))).astype(np.float32)
    want = np.concatenate([by_hand(model, ins[:3], procs[:3]), by_hand(model, ins[3:], procs[3:])])
    got = tdms.stabilize(ins, procs, model=model, amp="fp32")
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)
    np.testing.assert_array_equal(got[3], procs[3])
    ghost = tdms.stabilize(ins, procs, model=model, amp="fp32", cut_reset=False)
    assert np.abs(ghost[3] - procs[3]).mean() > 1e-3
    lazily = np.stack(list(tdms.stabilize_iter(ins, procs, model=model, amp="fp32")))
    np.testing.assert_array_equal(lazily, got)
