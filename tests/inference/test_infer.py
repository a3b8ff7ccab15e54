import json

import numpy as np
import pytest
import torch

from tdms.commands.test import main as run_cli
from tdms.config import Config, to_dict
from tdms.files import save_atomic
from tdms.frames.io import FrameSource, read_frame
from tdms.frames.outputs import MARKER
from tdms.inference.recurrence import naive_frames, pad_to, tdms_frames
from tdms.nets.tdms_net import TDMSNet
from tests.conftest import flicker, moving_frames, write_video


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.nf = 8
    path = tmp_path / "w.pth"
    save_atomic({"format": "tdms", "model": TDMSNet(nf=8).state_dict(), "config": to_dict(cfg)}, path)
    return path


@pytest.fixture
def pair(tmp_path):
    ins = moving_frames(n=5, h=30, w=38)  # not multiples of 4: padded and cropped back
    return write_video(tmp_path / "in", ins), write_video(tmp_path / "proc", flicker(ins))


def test_pad_reflects_and_keeps_size():
    x = torch.arange(30.0).view(1, 1, 5, 6)
    y, size = pad_to(x)
    assert y.shape == (1, 1, 8, 8) and size == (5, 6)
    assert torch.equal(y[..., :5, :6], x)
    assert torch.equal(y[..., 5, :6], x[..., 3, :])  # reflection: row 5 mirrors row 3


def test_tdms_frames_match_a_manual_recurrence(pair):
    torch.manual_seed(0)
    model = TDMSNet(nf=8).eval()
    src_i, src_p = FrameSource(pair[0]), FrameSource(pair[1])
    outs = list(tdms_frames(model, zip(src_i, src_p, strict=True)))
    assert len(outs) == 5 and outs[0].shape == (30, 38, 3)
    assert np.array_equal(outs[0], src_p[0])  # O_0 = P_0
    # frame 1 by hand: pad all four inputs to 32×40, run the net, crop
    t = [pad_to(torch.from_numpy(f.transpose(2, 0, 1))[None])[0] for f in (src_i[0], src_i[1], src_p[0], src_p[1])]
    with torch.no_grad():
        o1 = model(*t)["output"][0, :, :30, :38].permute(1, 2, 0).numpy()
    assert np.allclose(outs[1], o1, atol=1e-6)


def test_naive_blend_on_a_static_scene_halves_flicker():
    class Zero:
        def __call__(self, a, b):
            return torch.zeros(a.shape[0], 2, *a.shape[2:])

    img = np.full((8, 8, 3), 0.5, np.float32)
    ps = [img + d for d in (0.0, 0.2, 0.0)]
    outs = list(naive_frames(Zero(), zip([img] * 3, ps, strict=True)))
    assert np.allclose(outs[1], 0.6) and np.allclose(outs[2], 0.55)


def test_cli_writes_frames_and_refuses_to_clobber(pair, tmp_path, ckpt, capsys):
    out = tmp_path / "out"
    assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(out),
                      "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    assert len(FrameSource(out)) == 5 and read_frame(out / "00004.png").shape == (30, 38, 3)
    assert json.loads((out / MARKER).read_text())["frames"] == 5
    printed = capsys.readouterr().out
    assert "5 frames of 38×30" in printed and "5 frames in" in printed
    # complete output is skipped, --redo recomputes
    assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(out),
                      "--checkpoint", str(ckpt)]) == 0
    assert "already complete" in capsys.readouterr().out
    # made by other weights or another method: not "complete", and not replaced without --redo
    made = json.loads((out / MARKER).read_text())
    assert made["method"] == "tdms" and made["checkpoint"] == str(ckpt) and len(made["checkpoint_sha256"]) == 16
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    save_atomic({"format": "tdms", "model": TDMSNet(nf=8).state_dict(), "config": torch.load(ckpt)["config"]}, other)
    before = read_frame(out / "00004.png")
    for extra in (["--checkpoint", str(other)], ["--method", "identity"]):
        assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(out), *extra]) == 1
        err = capsys.readouterr().err
        assert f"holds an earlier output (method tdms, checkpoint {ckpt}, frames 5)" in err and "--redo" in err
    assert np.array_equal(read_frame(out / "00004.png"), before)
    assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(out),
                    "--checkpoint", str(other), "--redo"]) == 0
    assert json.loads((out / MARKER).read_text())["checkpoint"] == str(other)
    assert not np.array_equal(read_frame(out / "00004.png"), before)
    # the same weights by another path are the same maker: skipped
    copy = tmp_path / "copy" / "other.pth"
    copy.parent.mkdir()
    copy.write_bytes(other.read_bytes())
    assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(out),
                    "--checkpoint", str(copy)]) == 0
    assert "already complete" in capsys.readouterr().out
    # an empty folder made beforehand holds nothing to lose: written into without --redo
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["--method", "identity", "--input", str(pair[0]), "--processed", str(pair[1]),
                    "--output", str(empty)]) == 0
    assert len(FrameSource(empty)) == 5
    # output equal to an input, or a user folder tdms did not write: refused, nothing touched
    assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(pair[1]),
                      "--checkpoint", str(ckpt), "--redo"]) == 1
    assert "is the input itself" in capsys.readouterr().err
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    assert run_cli(["--method", "identity", "--input", str(pair[0]), "--processed", str(pair[1]),
                      "--output", str(user)]) == 1
    assert "not written by tdms" in capsys.readouterr().err and (user / "keep.txt").read_text() == "x"


def test_cli_bad_pairs(pair, tmp_path, ckpt, capsys):
    short = write_video(tmp_path / "short", flicker(moving_frames(n=4, h=30, w=38)))
    args = ["--input", str(pair[0]), "--processed", str(short), "--output", str(tmp_path / "o"), "--checkpoint",
            str(ckpt)]
    assert run_cli(args) == 1
    err = capsys.readouterr().err
    assert "frame count mismatch (missing frames): processed" in err and f"{short} has 4 frames" in err
    small = write_video(tmp_path / "small", moving_frames(n=5, h=20, w=38))
    args[3] = str(small)
    assert run_cli(args) == 1
    assert "38×20 (W×H)" in (err := capsys.readouterr().err) and "--resize-processed resizes it" in err
    assert run_cli(args + ["--resize-processed"]) == 0
    assert run_cli(["--input", str(pair[0]), "--processed", str(pair[1]), "--output", str(tmp_path / "x"),
                      "--checkpoint", str(tmp_path / "none.pth")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_dataset_mode_mirrors_the_layout(lai_root, tmp_path, ckpt):
    out = tmp_path / "results"
    assert run_cli(["--data-dir", str(lai_root), "--output", str(out), "--method", "identity"]) == 0
    got = read_frame(out / "gain" / "flicker" / "toy" / "v1" / "00003.png")
    want = read_frame(lai_root / "test" / "processed" / "gain" / "flicker" / "toy" / "v1" / "00003.png")
    assert np.array_equal(got, want)
    assert not list(out.rglob(".*.partial"))


def test_video_files_in_and_out(pair, tmp_path, ckpt):
    from tdms.frames.writers import FrameWriter

    vids = []
    for name, src in (("i.mp4", pair[0]), ("p.mp4", pair[1])):
        with FrameWriter(tmp_path / name, fps=10) as w:
            for f in FrameSource(src):
                w.write(f)
        vids.append(tmp_path / name)
    out = tmp_path / "o.mp4"
    assert run_cli(["--input", str(vids[0]), "--processed", str(vids[1]), "--output", str(out),
                      "--checkpoint", str(ckpt)]) == 0
    src = FrameSource(out)
    assert len(src) == 5 and src.size == (30, 38)


def test_cli_bonneel_reduces_flicker(pair, tmp_path):
    out = tmp_path / "b"
    assert run_cli(["--method", "bonneel", "--lambda", "1.0", "--input", str(pair[0]), "--processed", str(pair[1]),
                    "--output", str(out)]) == 0
    o, p = FrameSource(out), FrameSource(pair[1])
    assert np.array_equal(o[0], np.round(p[0] * 255) / 255)  # O_0 = P_0 (8-bit PNG)
    # the output's frame-to-frame mean-colour jumps are smaller than the processed video's
    jumps = [np.abs(np.diff([f.mean() for f in v])).mean() for v in (o, p)]
    assert jumps[0] < 0.7 * jumps[1], jumps
    # and keeps P's look: its gradients stay close to P's
    go, gp = np.diff(o[2], axis=1), np.diff(p[2], axis=1)
    assert np.abs(go - gp).mean() < 0.3 * np.abs(gp).mean()
