"""Batch evaluation end to end on the tiny Lai-layout dataset of conftest: tables, resume, bad folders, jobs."""

import csv
import json
import shutil

import numpy as np
import pytest
import yaml

from tdms.commands.evaluate import main
from tdms.flow import build_flow
from tdms.frames.io import FrameSource, list_frames
from tdms.inference.recurrence import naive_frames
from tests.conftest import write_video

TASK, DATASET = "gain/flicker", "toy"


@pytest.fixture(autouse=True)
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def make_results(root, tmp_path):
    """Method "same" = the processed frames; "calm" = the input frames (no flicker at all)."""
    for k in range(2):
        proc = root / "test" / "processed" / TASK / DATASET / f"v{k}"
        shutil.copytree(proc, tmp_path / "out" / "same" / TASK / DATASET / f"v{k}")
        calm = tmp_path / "out" / "calm" / TASK / DATASET / f"v{k}"
        shutil.copytree(root / "test" / "input" / DATASET / f"v{k}", calm)
    return {"same": str(tmp_path / "out" / "same"), "calm": str(tmp_path / "out" / "calm")}


def write_config(tmp_path, root, methods, **run):
    cfg = {"data": {"root": str(root)}, "methods": methods, "flow": {"cache": str(tmp_path / "cache")},
           "run": {"out": str(tmp_path / "eval"), "videos": 1, **run}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_config_run_tables_pictures_and_resume(lai_root, tmp_path, capsys):
    methods = make_results(lai_root, tmp_path)
    calm_v1 = tmp_path / "out" / "calm" / TASK / DATASET / "v1"
    last = list_frames(calm_v1)[-1]
    kept = last.read_bytes()
    last.unlink()  # a result folder with a missing frame
    config = write_config(tmp_path, lai_root, methods)
    assert main(["--config", str(config)]) == 0
    out = tmp_path / "eval"
    err = capsys.readouterr().err
    assert "error: calm gain/flicker/toy/v1: frame count mismatch (missing frames)" in err
    assert "6 video(s) scored, 0 reused, 1 not evaluated" in err
    same_v0 = json.loads((out / "same" / "videos" / TASK / DATASET / "v0.json").read_text())
    proc_v0 = json.loads((out / "processed" / "videos" / TASK / DATASET / "v0.json").read_text())
    assert same_v0["warping_error"] == proc_v0["warping_error"]  # same frames, same cached flows
    s = json.loads((out / "metrics.json").read_text())
    d_t = {r["task"]: r for r in s["tables"]["relative_reduction"]}
    assert d_t[TASK]["same"] == 0.0 and d_t[TASK]["calm"] > 0.5  # calm: only v0 counted
    e = {r["task"]: r for r in s["tables"]["warping_error"]}[TASK]
    assert e["processed"] == e["same"] and e["calm"] < e["processed"]
    lp = {r["task"]: r for r in s["tables"]["lpips"]}[TASK]
    assert lp["same"] is None  # no backbone file in this TORCH_HOME
    calm = [t for t in s["tasks"] if t["method"] == "calm"][0]
    assert calm["videos"] == 1 and calm["not_evaluated"] == 1
    with open(out / "videos.csv") as f:
        rows = {(r["method"], r["video"]): r for r in csv.DictReader(f)}
    assert len(rows) == 6 and rows[("calm", "v1")]["status"] == "error"
    assert float(rows[("calm", "v0")]["relative_reduction"]) == pytest.approx(
        1 - float(rows[("calm", "v0")]["warping_error"]) / float(rows[("processed", "v0")]["warping_error"]))
    md = (out / "tables.md").read_text()
    assert "(1 n/e)" in md and "alexnet-owt-7be5be79.pth" in md
    assert (out / "plots" / "warping_error" / DATASET / "gain_flicker" / "v0.png").stat().st_size > 1000
    assert (out / "plots" / "bars" / DATASET / "gain_flicker_D_t.png").stat().st_size > 1000
    assert (out / "plots" / "bars" / DATASET / "mean_D_t.png").exists()
    cmp_video = FrameSource(out / "videos" / DATASET / "gain_flicker" / "v0.mp4")
    assert len(cmp_video) == 6 and cmp_video.size == (32, 4 * 40)  # input | processed | same | calm
    assert not (out / "videos" / DATASET / "gain_flicker" / "v1.mp4").exists()  # --videos 1

    last.write_bytes(kept)  # repaired: a rerun scores only that video
    assert main(["--config", str(config)]) == 0
    assert "1 video(s) scored, 5 reused, 0 not evaluated" in capsys.readouterr().err
    assert main(["--config", str(config), "--tracker", "kcf"]) == 0  # other settings: methods rescored
    assert "4 video(s) scored, 2 reused" in capsys.readouterr().err
    assert json.loads((out / "calm" / "videos" / TASK / DATASET / "v0.json").read_text())["tracking"][
        "tracker"] == "kcf"
    # a method's frames rewritten (e.g. tdms-test --redo with new weights): that video is rescored, not reused
    same_v0 = tmp_path / "out" / "same" / TASK / DATASET / "v0"
    first = list_frames(same_v0)[0]
    first.write_bytes(list_frames(tmp_path / "out" / "calm" / TASK / DATASET / "v0")[0].read_bytes())
    assert main(["--config", str(config), "--tracker", "kcf"]) == 0
    assert "1 video(s) scored, 5 reused" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_results_parallel_jobs_and_resize(lai_root, tmp_path, capsys):
    methods = make_results(lai_root, tmp_path)
    big = tmp_path / "out" / "big" / TASK / DATASET
    for k in range(2):  # the calm frames at twice the size
        frames = [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in FrameSource(f"{methods['calm']}/{TASK}/{DATASET}/v{k}")]
        write_video(big / f"v{k}", frames)
    base = ["--data-dir", str(lai_root), "--cache", str(tmp_path / "cache"), "--no-tracking", "--no-lpips",
            "--videos", "0", "--results", f"calm={methods['calm']}", f"big={tmp_path / 'out' / 'big'}"]
    assert main(base + ["--out", str(tmp_path / "e1")]) == 0
    assert "frame size mismatch" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e2"), "--resize", "--jobs", "2"]) == 0
    for k in range(2):
        one = json.loads((tmp_path / "e1" / "calm" / "videos" / TASK / DATASET / f"v{k}.json").read_text())
        two = json.loads((tmp_path / "e2" / "calm" / "videos" / TASK / DATASET / f"v{k}.json").read_text())
        assert one["warping_error"] == two["warping_error"] and one["per_frame"] == two["per_frame"]
        big_k = json.loads((tmp_path / "e2" / "big" / "videos" / TASK / DATASET / f"v{k}.json").read_text())
        assert big_k["status"] == "ok" and big_k["warping_error"] == pytest.approx(one["warping_error"], abs=1e-6)
    s = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert s["methods"] == ["calm", "big"] and all(t["tracking_iou"] is None for t in s["tasks"])


def test_bad_batch_usage(lai_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "none.yaml")])
    assert e.value.code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  speed: 3\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(bad)])
    assert e.value.code == 2 and "unknown config key 'run.speed'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--config", str(bad), "--processed", "p"])
    assert e.value.code == 2
    reserved = ["--data-dir", str(lai_root), "--results", f"processed={tmp_path / 'r'}", "--out", str(tmp_path / "e")]
    assert main(reserved) == 1
    assert "reserved" in capsys.readouterr().err


def test_margins_protocols_and_tradeoff_charts(lai_root, tmp_path, capsys):
    """The ½/½ blend written as tdms-test writes it sits on the curve (margin 0 per video, task and dataset); the
    processed frames (D_t 0) lie outside it; the protocol comes from each result's marker."""
    blend, same = tmp_path / "out" / "blend", tmp_path / "out" / "same"
    for k in range(2):
        video = f"test/input/{DATASET}/v{k}", f"test/processed/{TASK}/{DATASET}/v{k}"
        pairs = zip(*(FrameSource(lai_root / v) for v in video), strict=True)
        write_video(blend / TASK / DATASET / f"v{k}", list(naive_frames(build_flow("dis", "medium"), pairs)))
        (blend / TASK / DATASET / f"v{k}" / ".tdms-output.json").write_text(json.dumps({"protocol": "original"}))
        shutil.copytree(lai_root / video[1], same / TASK / DATASET / f"v{k}")
    args = ["--data-dir", str(lai_root), "--cache", str(tmp_path / "cache"), "--no-tracking", "--no-lpips",
            "--videos", "0", "--results", f"blend={blend}", f"same={same}", "--out", str(tmp_path / "e")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "e"
    s = json.loads((out / "metrics.json").read_text())
    assert s["protocols"] == {"blend": "original", "same": "tdms"}
    rows = {(r["method"], r["video"]): r for r in csv.DictReader(open(out / "videos.csv"))}
    assert all(abs(float(rows[("blend", f"v{k}")]["margin"])) < 1e-9 for k in range(2))
    assert rows[("same", "v0")]["margin"] == "" and rows[("blend", "v0")]["protocol"] == "original"
    margins = {r["task"]: r for r in s["tables"]["margin"]}
    assert abs(margins[TASK]["blend"]) < 1e-9 and abs(margins["mean"]["blend"]) < 1e-9
    assert margins[TASK]["same"] is None
    curve = [c for c in s["curves"] if c["task"] == TASK][0]
    assert len(curve["psnr"]) == 9 and curve["relative_reduction"][0] > 0
    md = (out / "tables.md").read_text()
    assert "| blend | original |" in md and "| toy | gain/flicker | +0.000 | outside the curve |" in md
    assert "## Margin over the naive blend" in printed and "- processed " not in md  # P itself has no margin
    for name in (f"tradeoff_{DATASET}.png", f"tradeoff_{DATASET}_gain_flicker.png"):
        assert (out / "plots" / name).stat().st_size > 5000
    assert len(list((tmp_path / "cache").rglob("blend_*.json"))) == 2  # one curve per input video, beside its flows
