"""tdms-evaluate on one video, end to end on tiny synthetic videos in tmp_path."""

import json
import subprocess
import sys

import numpy as np
import pytest
from skimage import data

from tdms.commands.evaluate import main
from tdms.evaluation.lpips import load_lpips, lpips_distance
from tdms.frames.io import FrameSource, list_frames, read_frame
from tdms.frames.writers import write_frame
from tests.evaluation.test_lpips import write_backbone
from tests.evaluation.test_tracking import write_palette

H, W, N = 48, 64, 5
FLICKER = [0.05, -0.05, 0.05, -0.05, 0.05]  # per-frame offsets of the processed video


def moving(k: int) -> np.ndarray:
    """Frame k of a real photo panning 1 px right and 1 px down per frame."""
    img = data.astronaut().astype(np.float32) / 255.0
    return img[200 - k : 200 - k + H, 220 - k : 220 - k + W]


def write_video(folder, frames):
    for i, f in enumerate(frames):
        write_frame(folder / f"{i:05d}.png", f)
    return folder


def clip(n=N):
    """(input, processed, result) frame lists: P flickers by FLICKER (no clipping), O = P without flicker."""
    inp = [moving(k) for k in range(n)]
    base = [0.8 * f + 0.1 for f in inp]
    return inp, [b + c for b, c in zip(base, FLICKER, strict=False)], base


def make_video(root):
    return tuple(
        write_video(root / role, frames)
        for role, frames in zip(("input", "processed", "result"), clip(), strict=True)
    )


@pytest.fixture(autouse=True)
def empty_hub(tmp_path, monkeypatch):
    """No LPIPS backbone unless a test writes one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub"


def run(inp, res, out, *extra, proc=None):
    args = ["--input", str(inp), "--results", str(res), "--out", str(out)]
    return main(args + (["--processed", str(proc)] if proc else []) + list(extra))


def test_single_video(tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    out = tmp_path / "eval"
    assert (
        main(["--input", str(inp), "--processed", str(proc), "--results", str(res), "--out", str(out)]) == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["flow"] == "dis-medium" and m["n_frames"] == N
    assert (out / "warping_error.png").stat().st_size > 1000
    assert any((out / "flow_cache" / "dis-medium").iterdir())
    for key in ("warping_error", "warping_error_processed", "psnr", "ssim"):
        assert len(m["per_frame"][key]) == N - 1
        assert m[key] == pytest.approx(np.mean(m["per_frame"][key]))
    # consecutive flicker offsets differ by 0.1, so E(P) ~ 0.1^2 (plus flow error)
    assert m["warping_error_processed"] == pytest.approx(0.01, rel=0.2)
    assert m["warping_error"] < 0.001
    assert m["relative_reduction"] == pytest.approx(1 - m["warping_error"] / m["warping_error_processed"])
    assert m["psnr"] == pytest.approx(20 * np.log10(1 / 0.05), abs=0.3)  # |O - P| = 0.05 up to 8-bit rounding
    assert 0.5 < m["ssim"] < 1.0
    # no backbone file: LPIPS and the composite are null, with the file and the folder to put it in
    assert m["lpips"] is None and m["composite"] is None
    assert "alexnet-owt-7be5be79.pth" in m["lpips_note"] and str(tmp_path / "torch" / "hub" / "checkpoints") in m[
        "lpips_note"]
    assert m["composite_note"] == "needs lpips"
    t = m["tracking"]
    assert 0.0 <= m["tracking_iou"] <= 1.0 and t["reference"] == "tracker" and t["tracker"] == "csrt"
    assert t["frames"] + t["no_reference"] == N - 1 and t["box_source"] in ("motion", "texture", "centre")
    assert len(m["per_frame"]["boxes"]) == N
    printed = capsys.readouterr().out
    assert "warping_error" in printed and "note: lpips: LPIPS (alex) needs" in printed


def test_single_video_without_processed(tmp_path):
    inp, _, res = make_video(tmp_path)
    assert (
        main(
            [
                "--input",
                str(inp),
                "--results",
                str(res),
                "--out",
                str(tmp_path / "eval"),
                "--flow-preset",
                "ultrafast",
                "--cache",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["flow"] == "dis-ultrafast" and "relative_reduction" not in m and "psnr" not in m
    assert m["composite"] is None and "--processed" in m["composite_note"]
    assert (tmp_path / "c" / "dis-ultrafast").is_dir()


def test_mismatched_frame_count_exits_1(tmp_path, capsys):
    inp, proc, _ = make_video(tmp_path)
    short = write_video(tmp_path / "short", [moving(k) for k in range(N - 1)])
    code = main(
        [
            "--input",
            str(inp),
            "--processed",
            str(proc),
            "--results",
            str(short),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert str(short) in err and str(inp) in err and f"{N - 1} frames" in err and f"{N}" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--results", "r", "--out", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--input", "i", "--data-dir", "d", "--results", "r", "--out", str(tmp_path)])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "flag, value",
    [("--threads", "-1"), ("--jobs", "0"), ("--videos", "-1"), ("--device", "cuda"), ("--device", "gpu")],
)
def test_bad_threads_jobs_and_devices_exit_2_before_any_work(tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the same on a machine with a GPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    inp, proc, res = make_video(tmp_path)
    with pytest.raises(SystemExit) as e:
        run(inp, res, tmp_path / "eval", flag, value, proc=proc)
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and value in err, err
    assert "Traceback" not in err and not (tmp_path / "eval").exists()


def test_bad_run_settings_in_batch_mode_exit_2(lai_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    base = ["--data-dir", str(lai_root), "--results", f"same={lai_root}", "--out", str(tmp_path / "e"), "--set"]
    for setting in ("run.jobs=0", "run.threads=-2", "flow.device=cuda:1"):
        with pytest.raises(SystemExit) as e:
            main([*base, setting])
        assert e.value.code == 2 and setting.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_out_must_be_a_folder_tdms_evaluate_wrote(lai_root, tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    user = tmp_path / "UserE"
    user.mkdir()
    (user / "metrics.json").write_text("mine")
    assert run(inp, res, user, "--no-tracking") == 1
    err = capsys.readouterr().err
    assert str(user) in err and "metrics.json" in err and "Traceback" not in err
    assert [p.name for p in user.iterdir()] == ["metrics.json"] and (user / "metrics.json").read_text() == "mine"
    batch = ["--data-dir", str(lai_root), "--results", f"same={lai_root}", "--no-tracking", "--out", str(user)]
    assert main(batch) == 1 and str(user) in capsys.readouterr().err
    assert [p.name for p in user.iterdir()] == ["metrics.json"]
    text = tmp_path / "file.txt"
    text.write_text("mine")
    assert run(inp, res, text, "--no-tracking") == 1
    err = capsys.readouterr().err
    assert f"{text} is a file, not a folder" in err and "Traceback" not in err and text.read_text() == "mine"
    empty = tmp_path / "empty"  # an empty folder becomes ours; a rerun into our own folder works
    empty.mkdir()
    assert run(inp, res, empty, "--no-tracking") == 0
    assert run(inp, res, empty, "--no-tracking") == 0 and (empty / "metrics.json").is_file()


@pytest.mark.slow
def test_rerun_after_the_input_frames_change_uses_their_new_flows(tmp_path):
    inp, proc, res = make_video(tmp_path)
    assert run(inp, res, tmp_path / "ev", proc=proc) == 0
    first = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for path in list_frames(inp):  # the same files, mirrored in place
        write_frame(path, read_frame(path)[:, ::-1])
    assert run(inp, res, tmp_path / "ev", proc=proc) == 0
    assert run(inp, res, tmp_path / "fresh", proc=proc) == 0
    again, fresh = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ev", "fresh"))
    assert again == fresh and again["warping_error"] > 2 * first["warping_error"]


def test_out_inside_evaluated_folder_exits_1(tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    assert main(["--input", str(inp), "--results", str(res), "--out", str(res / "eval")]) == 1
    assert "being evaluated" in capsys.readouterr().err
    assert not (res / "eval").exists()


@pytest.mark.slow
def test_lpips_and_composite_with_a_backbone_file(tmp_path, empty_hub):
    write_backbone(empty_hub, "alex")
    inp, proc, res = make_video(tmp_path)
    assert run(inp, res, tmp_path / "eval", proc=proc) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model = load_lpips("alex")
    o, p = list(FrameSource(res)), list(FrameSource(proc))  # the frames as stored (8-bit PNG)
    want = np.mean([lpips_distance(model, o[k], p[k]) for k in range(1, N)])
    assert m["lpips"] == pytest.approx(want, rel=1e-5) and m["lpips"] > 0
    assert m["composite"] == pytest.approx(
        0.25 * (1 - m["lpips"]) + 0.25 * m["tracking_iou"] + 0.5 * m["relative_reduction"])
    assert run(inp, res, tmp_path / "e2", "--no-tracking", proc=proc) == 0
    m2 = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert "tracking_iou" not in m2 and m2["composite"] == pytest.approx(
        0.5 * (1 - m2["lpips"]) + 0.5 * m2["relative_reduction"])
    assert run(inp, res, tmp_path / "e3", "--no-lpips", proc=proc) == 0
    m3 = json.loads((tmp_path / "e3" / "metrics.json").read_text())
    assert m3["lpips"] is None and m3["lpips_note"] == "skipped (--no-lpips)" and m3["composite"] is None


def test_tracking_on_the_input_itself_is_perfect_and_box_overrides(tmp_path):
    inp, proc, _ = make_video(tmp_path)
    assert run(inp, inp, tmp_path / "eval", "--no-lpips", "--box", "10,8,24,20", "--cache", str(tmp_path / "c")) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # the same tracker on the same frames from the same box: the reference itself
    assert m["tracking_iou"] == 1.0 and m["tracking"]["lost"] == 0 and m["tracking"]["frames"] == N - 1
    assert m["tracking"]["first_box"] == [10, 8, 24, 20] and m["tracking"]["box_source"] == "user"
    assert run(inp, proc, tmp_path / "kcf", "--tracker", "kcf", "--box", "10,8,24,20", "--cache",
               str(tmp_path / "c")) == 0
    assert json.loads((tmp_path / "kcf" / "metrics.json").read_text())["tracking"]["tracker"] == "kcf"
    assert run(inp, inp, tmp_path / "bad", "--box", "50,8,24,20") == 1  # leaves the 64 px wide frame


def test_tracking_from_annotations(tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    ann = tmp_path / "ann"
    ann.mkdir()
    for k in range(N):  # the object moves with the scene: 1 px right and down per frame
        ids = np.zeros((H, W))
        ids[10 + k : 30 + k, 20 + k : 44 + k] = 1
        write_palette(ann / f"{k:05d}.png", ids)
    assert run(inp, inp, tmp_path / "eval", "--no-lpips", "--annotations", str(ann), proc=proc) == 0
    t = json.loads((tmp_path / "eval" / "metrics.json").read_text())["tracking"]
    assert t["reference"] == "annotations" and t["object_id"] == 1 and t["first_box"] == [20, 10, 24, 20]
    write_palette(ann / "00000.png", np.zeros((H, W)))  # no object in the first frame: reported, not fatal
    assert run(inp, res, tmp_path / "e2", "--annotations", str(ann), proc=proc) == 0
    m = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m["tracking_iou"] is None and "00000.png: no object in the first frame" in m["tracking_note"]
    assert "note: tracking:" in capsys.readouterr().out


def test_other_frame_size_fails_or_resizes(tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    big = write_video(tmp_path / "big", [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in clip()[2]])
    assert run(inp, big, tmp_path / "eval", proc=proc) == 1
    assert "frame size mismatch" in capsys.readouterr().err
    assert run(inp, big, tmp_path / "eval", "--resize", "--no-tracking", proc=proc) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["warping_error"] < 0.001 and m["psnr"] > 25  # 2x nearest upscaling, area-resized back


def test_network_flow_without_weights_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    inp, proc, res = make_video(tmp_path)
    code = main(["--input", str(inp), "--results", str(res), "--flow", "flownet2", "--no-tracking", "--no-lpips",
                 "--flow-checkpoint", str(tmp_path / "FlowNet2_checkpoint.pth.tar"), "--out", str(tmp_path / "e")])
    assert code == 1
    assert "FlowNet2_checkpoint.pth.tar" in capsys.readouterr().err


def test_a_refused_input_leaves_no_out_folder(tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    out = tmp_path / "new_eval"
    assert run(tmp_path / "no_such_input", res, out, "--no-tracking", proc=proc) == 1
    assert "no_such_input" in capsys.readouterr().err and not out.exists()
    short = write_video(tmp_path / "short", [moving(k) for k in range(N - 1)])
    assert run(inp, short, out, "--no-tracking", proc=proc) == 1 and not out.exists()
    kept = tmp_path / "kept"  # a folder that was there before stays, empty as it was
    kept.mkdir()
    assert run(inp, short, kept, "--no-tracking", proc=proc) == 1 and kept.is_dir()


@pytest.mark.slow  # a new Python process that imports torch
def test_sigterm_exits_143_and_leaves_no_new_out_folder(tmp_path):
    inp, proc, res = make_video(tmp_path)
    out = tmp_path / "eval"
    script = ("import os, signal, sys\n"
              "import tdms.commands.evaluate as ev\n"
              "ev.evaluate_video = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)\n"
              "sys.exit(ev.main(sys.argv[1:]))\n")
    args = ["--input", str(inp), "--results", str(res), "--processed", str(proc), "--out", str(out), "--no-tracking"]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_single_video_margin_curve_chart_and_protocol(tmp_path, capsys):
    inp, proc, res = make_video(tmp_path)
    (res / ".tdms-output.json").write_text(json.dumps({"method": "tdms", "protocol": "original"}))
    assert run(inp, res, tmp_path / "eval", "--no-tracking", proc=proc) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["protocol"] == "original" and len(m["blend_curve"]["psnr"]) == 9
    # O = P without its flicker: D_t near 1, beyond the blend's a = 0.9 point, so no margin, said why
    assert m["relative_reduction"] > m["blend_curve"]["relative_reduction"][-1]
    assert m["margin"] is None and "outside the naive curve's D_t range" in m["margin_note"]
    assert (tmp_path / "eval" / "tradeoff.png").stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "| original |" in printed and "naive blend curve (a: D_t / PSNR dB): 0.1: " in printed
    assert "note: margin: D_t" in printed
    assert run(inp, res, tmp_path / "no_p", "--no-tracking") == 0  # without P: no curve, no chart
    m = json.loads((tmp_path / "no_p" / "metrics.json").read_text())
    assert m["protocol"] == "original" and m["margin"] is None and "--processed" in m["margin_note"]
    assert not (tmp_path / "no_p" / "tradeoff.png").exists()
