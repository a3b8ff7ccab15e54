"""Fast inference paths: several videos a batch, channels_last, bf16, compile, CUDA graphs, and the threads that
overlap reading and writing with the network."""

import threading

import numpy as np
import pytest
import torch

from tdms.commands.test import main as run_cli
from tdms.config import Config, to_dict
from tdms.files import save_atomic
from tdms.frames.io import FrameSource, prefetch, read_frame
from tdms.frames.outputs import process_video
from tdms.frames.writers import write_frame
from tdms.inference.across_videos import Video, batched_frames, group_by_size, stacked_steps
from tdms.inference.fast import Step, make_step
from tdms.inference.recurrence import step_frames, tdms_frames
from tdms.nets.prepacked import can_prepack
from tdms.nets.tdms_net import TDMSNet
from tests.conftest import flicker, moving_frames, write_video

LENGTHS = (5, 3, 6, 4)  # unequal: videos leave the batch at different steps and waiting ones take their slots


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TDMSNet(nf=8).eval()


@pytest.fixture
def clips():
    out = []
    for k, n in enumerate(LENGTHS):
        ins = moving_frames(n=n, h=30, w=38, shift=1 + k)  # 30×38: padded to 32×40 and cropped back
        out.append((ins, flicker(ins, seed=k)))
    return out


def run_batched(step, clips, batch, device="cpu"):
    videos = [Video(f"v{k}", (30, 38), list(zip(i, p, strict=True))) for k, (i, p) in enumerate(clips)]
    got: dict[int, list] = {k: [] for k in range(len(clips))}
    for k, frame in batched_frames(step, videos, batch, device):
        got[k].append(frame.copy())
    return got


def max_diff(a: list, b: list) -> float:
    assert len(a) == len(b)
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("batch", [2, 3, 8])
def test_batched_equals_one_video_at_a_time(net, clips, batch):
    want = [list(tdms_frames(net, zip(i, p, strict=True))) for i, p in clips]
    got = run_batched(make_step(net, "cpu"), clips, batch)
    for k, (_, p) in enumerate(clips):
        assert len(got[k]) == LENGTHS[k]
        assert np.array_equal(got[k][0], p[0])  # O_0 = P_0
        assert max_diff(got[k], want[k]) <= 1e-5
        assert not np.allclose(got[k][2], p[2], atol=1e-3)  # the network really ran


def test_slots_are_refilled_in_order():
    videos = []
    for k, n in enumerate((3, 1, 2)):
        frames = [np.full((6, 10, 3), k + t / 10, np.float32) for t in range(n)]
        videos.append(Video(f"v{k}", (6, 10), list(zip(frames, frames, strict=True))))
    steps = list(stacked_steps(videos, batch=2))
    # v1 ends after one frame; v2 takes its slot at step 1 and runs beside v0 to the end
    assert [keys for keys, *_ in steps] == [[0, 1], [0, 2], [0, 2]]
    assert [fresh for *_, fresh in steps] == [[True, True], [False, True], [False, False]]  # each video's frame 0
    keys, i_t, p_t, _ = steps[1]
    assert i_t.shape == (2, 3, 8, 12)  # padded to multiples of 4
    assert torch.allclose(i_t[:, 0, 0, 0], torch.tensor([0.1, 2.0]))  # v0 frame 1, v2 frame 0
    assert torch.equal(i_t, p_t)


def test_grouping_by_size_and_errors(net):
    a, b = np.zeros((8, 12, 3), np.float32), np.zeros((12, 16, 3), np.float32)
    videos = [Video("a", (8, 12), [(a, a)]), Video("b", (12, 16), [(b, b)]), Video("c", (8, 12), [(a, a)])]
    assert group_by_size(videos) == [[0, 2], [1]]
    step = make_step(net, "cpu")
    with pytest.raises(ValueError, match="one frame size"):
        list(batched_frames(step, videos, 2))
    changing = Video("clip7", (8, 12), [(a, a), (b, b)])
    with pytest.raises(ValueError, match=r"clip7: original frame 1 has shape \(12, 16, 3\)"):
        list(batched_frames(step, [changing], 2))


def test_channels_last_and_the_fp32_composition_match_the_model(net, clips):
    i, p = clips[2]
    want = list(tdms_frames(net, zip(i, p, strict=True)))
    fast = list(step_frames(make_step(net, "cpu", channels_last=True), zip(i, p, strict=True)))
    assert max_diff(fast, want) <= 1e-5
    # the split path (heads in a cast copy, O composed by fast.Step) with fp32 "casting" is TDMSNet.forward
    x = [torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.inference_mode():
        split = Step(net, torch.float32, False, "cpu")
        assert split.split
        assert torch.allclose(split(*x)[0], net(*x)["output"], atol=1e-6)


def test_bf16_on_cpu_within_tolerance(net, clips):
    i, p = clips[0]
    want = list(tdms_frames(net, zip(i, p, strict=True)))
    got = list(tdms_frames(net, zip(i, p, strict=True), amp="bf16"))
    errs = [float(np.abs(x - y).mean()) for x, y in zip(got, want, strict=True)]
    assert errs[0] == 0 and all(0 < e <= 5e-3 for e in errs[1:]), errs  # 0 < e: it really ran in bf16
    assert all(g.dtype == np.float32 for g in got)


def test_cpu_refuses_fp16_and_cuda_graphs(net):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        make_step(net, "cpu", "fp16")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        make_step(net, "cpu", cuda_graph=True)
    with pytest.raises(ValueError, match="unknown dtype"):
        make_step(net, "cpu", "int8")


def test_recurrent_state_is_carried_and_refused_in_a_batch(clips):
    from tdms.nets.lai_net import LaiNet

    torch.manual_seed(0)
    lai = LaiNet(nf=8).eval()
    i, p = clips[0]
    got = list(tdms_frames(lai, zip(i, p, strict=True)))
    t = [torch.from_numpy(f.transpose(2, 0, 1))[None] for f in (*i[:3], *p[:3])]
    pad = [torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect") for x in t]  # 30×38 -> 32×40
    with torch.inference_mode():
        o1 = lai(pad[0], pad[1], pad[3], pad[4])
        o2 = lai(pad[1], pad[2], o1["output"], pad[5], o1["state"])["output"]
    assert np.allclose(got[2], o2[0, :, :30, :38].permute(1, 2, 0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="recurrent state"):
        run_batched(make_step(lai, "cpu"), clips, 2)


@pytest.mark.slow  # torch.compile: 15-90 s
def test_compile_matches_eager(net, clips):
    i, p = clips[1]
    want = list(tdms_frames(net, zip(i, p, strict=True)))
    got = list(step_frames(make_step(net, "cpu", compile=True), zip(i, p, strict=True)))
    assert max_diff(got, want) <= 1e-5


@pytest.mark.slow  # torch.compile: ~60 s
def test_compile_in_bf16_channels_last_runs_the_plain_layers():
    """tdms-test --compile on a CPU with bf16 (its default: bf16, channels_last): the compiled step gets the plain
    layers (inductor reorders the weights itself; the prepacked path's strided views do not trace) and matches the
    eager prepacked step within the bf16 tolerance."""
    if not can_prepack(torch.bfloat16):
        pytest.skip("no native bf16 on this CPU")
    torch.manual_seed(0)
    model = TDMSNet(nf=8).eval()
    frames = [torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    with torch.inference_mode():
        eager = make_step(model, "cpu", "bf16", True)(*frames)[0]
        compiled = make_step(model, "cpu", "bf16", True, compile=True)(*frames)[0]
    assert (compiled - eager).abs().mean() < 5e-3


def test_reading_and_writing_overlap_the_network(tmp_path, monkeypatch):
    """Deterministic: step t waits until frame t+1 has been decoded, and frame t-1's write waits until step t
    has started. Run one after the other, either wait would time out."""
    n, timeout = 5, 10.0
    decoded = [threading.Event() for _ in range(n)]
    started = [threading.Event() for _ in range(n)]
    missed = []
    frames = moving_frames(n=n, h=8, w=12)

    def source():
        for t, f in enumerate(frames):
            decoded[t].set()
            yield f, f

    def step(i_prev, i_t, o_prev, p_t, state=None):
        t = len([e for e in started if e.is_set()]) + 1  # frame 0 is O_0 = P_0, no step
        started[t].set()
        if t + 1 < n and not decoded[t + 1].wait(timeout):
            missed.append(f"frame {t + 1} was not read while step {t} ran")
        return p_t, None

    from tdms.frames.writers import FrameWriter

    write = FrameWriter.write

    def slow_write(self, img):
        t = self.count
        if t + 1 < n and not started[t + 1].wait(timeout):
            missed.append(f"frame {t} was not written while step {t + 1} ran")
        write(self, img)

    monkeypatch.setattr(FrameWriter, "write", slow_write)
    process_video(step_frames(step, prefetch(source())), tmp_path / "o", n, 30.0, {})
    assert not missed, missed
    assert len(FrameSource(tmp_path / "o")) == n


def layout(root, sizes: dict[str, tuple[int, int, int]]):
    """Lai et al.'s layout with one task; sizes: video -> (frames, H, W)."""
    (root / "lists").mkdir(parents=True)
    for k, (video, (n, h, w)) in enumerate(sizes.items()):
        ins = moving_frames(n=n, h=h, w=w, shift=1 + k)
        write_video(root / "test" / "input" / "toy" / video, ins)
        write_video(root / "test" / "processed" / "gain" / "toy" / video, flicker(ins, seed=k))
    (root / "lists" / "toy_test.txt").write_text("\n".join(sizes) + "\n")
    (root / "lists" / "test_tasks.txt").write_text("toy gain\n")
    return root


@pytest.fixture
def ckpt(tmp_path, net):
    cfg = Config()
    cfg.model.nf = 8
    path = tmp_path / "w.pth"
    save_atomic({"format": "tdms", "model": net.state_dict(), "config": to_dict(cfg)}, path)
    return path


def test_cli_batch_videos_groups_sizes_and_matches_one_at_a_time(tmp_path, ckpt, capsys):
    root = layout(tmp_path / "data", {"a": (4, 30, 38), "b": (6, 24, 32), "c": (3, 30, 38), "d": (5, 30, 38)})
    base = ["--data-dir", str(root), "--checkpoint", str(ckpt), "--device", "cpu"]
    assert run_cli(base + ["--output", str(tmp_path / "one")]) == 0
    assert run_cli(base + ["--output", str(tmp_path / "many"), "--batch-videos", "2", "--channels-last"]) == 0
    out = capsys.readouterr().out
    assert "4 video(s)" in out and "done: 18 frames" in out
    for video, n in (("a", 4), ("b", 6), ("c", 3), ("d", 5)):
        one, many = (FrameSource(tmp_path / d / "gain" / "toy" / video) for d in ("one", "many"))
        assert len(many) == n
        assert max(float(np.abs(x - y).max()) for x, y in zip(one, many, strict=True)) <= 1 / 255 + 1e-6
    assert not list((tmp_path / "many").rglob(".*.partial"))
    # a rerun skips the complete outputs
    assert run_cli(base + ["--output", str(tmp_path / "many"), "--batch-videos", "2"]) == 0
    assert "4 already complete" in capsys.readouterr().out


def test_cli_batch_videos_bad_input(tmp_path, ckpt, capsys):
    root = layout(tmp_path / "data", {"a": (4, 30, 38), "b": (4, 30, 38)})
    bad = root / "test" / "input" / "toy" / "b" / "00002.png"
    write_frame(bad, np.zeros((20, 38, 3), np.float32))  # frame 2 of b changes size
    args = ["--data-dir", str(root), "--output", str(tmp_path / "o"), "--checkpoint", str(ckpt), "--batch-videos", "2"]
    assert run_cli(args) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "differs from frame 0" in err
    assert read_frame(bad).shape == (20, 38, 3)  # input untouched
    assert not list((tmp_path / "o").rglob(".*.partial"))  # the folders begun are removed
    for wrong in (["--batch-videos", "0"], ["--batch-videos", "2", "--method", "identity"]):
        with pytest.raises(SystemExit) as e:
            run_cli(["--data-dir", str(root), "--output", str(tmp_path / "x")] + wrong)
        assert e.value.code == 2
    with pytest.raises(SystemExit):
        run_cli(["--input", "i", "--processed", "p", "--output", str(tmp_path / "y"), "--batch-videos", "2"])


def test_cli_batch_videos_ctrl_c(tmp_path, ckpt, capsys, monkeypatch):
    from tdms.commands import test as command

    def interrupted(*args):
        for n, item in enumerate(batched_frames(*args)):
            if n == 5:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(command, "batched_frames", interrupted)
    root = layout(tmp_path / "data", {"a": (4, 30, 38), "b": (4, 30, 38)})
    out = tmp_path / "o"
    assert run_cli(["--data-dir", str(root), "--output", str(out), "--checkpoint", str(ckpt), "--batch-videos",
                    "2"]) == 130
    err = capsys.readouterr().err
    assert f"tdms-test: interrupted: 0 video(s) written to {out}" in err and "Traceback" not in err
    assert not list(out.rglob(".*.partial"))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_graphs_bf16_and_batches_on_the_gpu(net, clips):
    want = run_batched(make_step(net, "cpu"), clips, 1)
    gpu = net.to("cuda")
    eager = run_batched(make_step(gpu, "cuda", channels_last=True), clips, 3, "cuda")
    graphs = run_batched(make_step(gpu, "cuda", channels_last=True, cuda_graph=True), clips, 3, "cuda")
    i, p = clips[0]
    single = list(step_frames(make_step(gpu, "cuda", cuda_graph=True), zip(i, p, strict=True), "cuda"))
    assert max_diff(single, eager[0]) <= 1e-4
    for k in range(len(clips)):
        assert max_diff(graphs[k], eager[k]) <= 1e-4  # the same kernels, replayed
        errs = [float(np.abs(x - y).mean()) for x, y in zip(eager[k], want[k], strict=True)]
        assert max(errs) <= 2e-3, errs  # cuDNN convs run in TF32 by default
    for amp in ("bf16", "fp16"):
        low = run_batched(make_step(gpu, "cuda", amp, channels_last=True, cuda_graph=True), clips, 3, "cuda")
        for k in range(len(clips)):
            errs = [float(np.abs(x - y).mean()) for x, y in zip(low[k], want[k], strict=True)]
            assert max(errs) <= 5e-3, (amp, errs)
