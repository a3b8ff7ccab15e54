"""Batch tables from hand-made per-video rows: means, D_t from the processed rows, NaN and gaps counted."""

import csv
import io
import math

import pytest

from tdms.evaluation.report import markdown, mean_of, summarise, videos_csv


def row(method, task, video, status="ok", **metrics):
    return {"method": method, "dataset": "D", "task": task, "video": video, "status": status, **metrics}


def rows():
    """Two tasks; task a has videos v1, v2; method m2 has a NaN PSNR on a/v2 and is missing b/v1."""
    return [
        row("processed", "a", "v1", warping_error=0.010),
        row("processed", "a", "v2", warping_error=0.020),
        row("processed", "b", "v1", warping_error=0.004),
        row("m1", "a", "v1", warping_error=0.005, lpips=0.1, tracking_iou=0.6, psnr=30.0, ssim=0.9),
        row("m1", "a", "v2", warping_error=0.030, lpips=0.3, tracking_iou=0.4, psnr=20.0, ssim=0.8),
        row("m1", "b", "v1", warping_error=0.001, lpips=0.2, tracking_iou=None, psnr=25.0, ssim=0.7,
            tracking_note="no object"),
        row("m2", "a", "v1", warping_error=0.002, lpips=0.0, tracking_iou=1.0, psnr=math.inf, ssim=1.0),
        row("m2", "a", "v2", warping_error=0.010, lpips=0.1, tracking_iou=0.5, psnr=math.nan, ssim=0.9),
        row("m2", "b", "v1", status="error", note="frame count mismatch (missing frames)"),
    ]


def test_mean_of_leaves_out_and_counts_nan_and_none():
    assert mean_of([1.0, math.nan, 3.0, None]) == (2.0, 2)
    assert mean_of([math.nan]) == (None, 1)
    assert mean_of([1.0, math.inf]) == (math.inf, 0)  # PSNR of identical frames is a real value


def test_summary_by_hand():
    r = rows()
    s = summarise(r, ["m1", "m2"], "processed", use_iou=True)
    m1a, m1b, m2a = s["tasks"][("m1", "D", "a")], s["tasks"][("m1", "D", "b")], s["tasks"][("m2", "D", "a")]
    # D_t per video: max(0, 1 - E/E_p): m1 a/v1 0.5, a/v2 0 (worse than processed), b/v1 0.75
    assert m1a["relative_reduction"] == pytest.approx(0.25)
    assert m1b["relative_reduction"] == pytest.approx(0.75)
    assert m2a["relative_reduction"] == pytest.approx((0.8 + 0.5) / 2)
    c = [0.25 * 0.9 + 0.25 * 0.6 + 0.5 * 0.5, 0.25 * 0.7 + 0.25 * 0.4 + 0.0]
    assert m1a["composite"] == pytest.approx(sum(c) / 2)
    assert m1b["composite"] is None and m1b["excluded"] == {}  # the only video has no IoU: nothing to average
    assert m2a["psnr"] == math.inf and m2a["excluded"] == {"psnr": 1}  # the NaN is left out and counted
    assert s["tasks"][("m2", "D", "b")] == {"videos": 0, "not_evaluated": 1, "excluded": {}, "margin": None, **{
        k: None for k in ("relative_reduction", "tracking_iou", "composite", "warping_error", "lpips", "psnr",
                          "ssim")}, "tradeoff": {"margin": None,
                                                 "margin_note": "no video with D_t, PSNR and a naive curve"}}
    o1, o2 = s["overall"][("m1", "D")], s["overall"][("m2", "D")]
    assert o1["warping_error"] == pytest.approx(((0.005 + 0.03) / 2 + 0.001) / 2)  # mean over tasks of task means
    assert o1["relative_reduction_sum"] == pytest.approx(1.0)
    assert o1["excluded"] == {"composite": 1, "tracking_iou": 1}  # task b has neither: one task left out
    assert o2["warping_error"] == pytest.approx(0.006) and o2["not_evaluated"] == 1
    assert len(o2["excluded"]) == 7 and set(o2["excluded"].values()) == {1}  # task b: no video evaluated
    d_t = {(t["dataset"], t["task"]): t for t in s["tables"]["relative_reduction"]}
    assert d_t[("D", "a")] == {"dataset": "D", "task": "a", "m1": pytest.approx(0.25), "m2": pytest.approx(0.65)}
    assert d_t[("D", "sum")]["m1"] == pytest.approx(1.0)
    e = s["tables"]["warping_error"][0]
    assert list(e) == ["dataset", "task", "processed", "m1", "m2"] and e["processed"] == pytest.approx(0.015)


# Hand-made blend curves (D_t, PSNR at three a's) for the processed rows of task a.
CURVE_V1 = {"alphas": [0.1, 0.5, 0.9], "relative_reduction": [0.2, 0.4, 0.8], "psnr": [32.0, 28.0, 24.0]}
CURVE_V2 = {"alphas": [0.1, 0.5, 0.9], "relative_reduction": [0.0, 0.2, 0.6], "psnr": [24.0, 20.0, 16.0]}


def curve_rows():
    r = rows()
    r[0]["blend_curve"], r[1]["blend_curve"] = CURVE_V1, CURVE_V2
    r[3]["protocol"] = r[4]["protocol"] = r[5]["protocol"] = "tdms"
    r[6]["protocol"], r[7]["protocol"] = "original", "tdms"
    return r


def test_margins_per_video_task_and_dataset_by_hand():
    r = curve_rows()
    s = summarise(r, ["m1", "m2"], "processed", use_iou=True)
    m1_v1, m1_v2, m1_b = r[3], r[4], r[5]
    # m1 a/v1: D_t 0.5, PSNR 30; the curve at 0.5 is 28 - (0.1/0.4)·4 = 27 dB: +3 dB
    assert m1_v1["margin"] == pytest.approx(3.0)
    # m1 a/v2: D_t 0 (E above E(P)), PSNR 20: the curve starts at 0 with 24 dB: -4 dB
    assert m1_v2["margin"] == pytest.approx(-4.0)
    assert m1_b["margin"] is None and "no naive curve" in m1_b["margin_note"]  # task b has no curve
    assert r[7]["margin"] is None and r[7]["margin_note"] == "needs D_t and PSNR"  # m2 a/v2: PSNR NaN
    # task a of m1: the mean point (D_t 0.25, PSNR 25) against the mean curve (0.1, 28), (0.3, 24), (0.7, 20),
    # which is 24 + (0.05/0.2)·4 = 25 dB at 0.25: margin 0
    a = s["tasks"][("m1", "D", "a")]
    assert a["tradeoff"]["curve"]["psnr"] == pytest.approx([28.0, 24.0, 20.0])
    assert a["tradeoff"]["relative_reduction"] == pytest.approx(0.25) and a["tradeoff"]["psnr"] == pytest.approx(25)
    assert a["margin"] == pytest.approx(0.0, abs=1e-12)
    assert s["overall"][("m1", "D")]["margin"] == pytest.approx(0.0, abs=1e-12)  # task b has no curve: task a's
    # m2 a: only v1 has a PSNR (inf: O = P on a frame), at D_t 0.8, CURVE_V1's last point: an inf margin
    assert s["tasks"][("m2", "D", "a")]["margin"] == math.inf
    assert s["curves"][("D", "a")]["psnr"] == pytest.approx([28.0, 24.0, 20.0]) and ("D", "b") not in s["curves"]
    assert s["curves"][("D", "mean")] == s["curves"][("D", "a")]
    assert s["protocols"] == {"m1": "tdms", "m2": "mixed: original, tdms"}
    margins = {(t["dataset"], t["task"]): t for t in s["tables"]["margin"]}
    assert margins[("D", "a")]["m1"] == pytest.approx(0.0, abs=1e-12) and margins[("D", "b")]["m1"] is None


def test_markdown_shows_protocols_margins_and_the_curve():
    r = curve_rows()
    r[3]["psnr"] = 40.0  # m1 a/v1 far above the curve: D_t 0.5 is inside its range
    r[4]["warping_error"] = 0.001  # m1 a/v2: D_t 0.95, outside CURVE_V2's 0.0–0.6
    s = summarise(r, ["m1", "m2"], "processed", use_iou=True)
    text = markdown(s, r, "test")
    assert "| m1 | tdms |" in text and "| m2 | mixed: original, tdms |" in text
    assert "## Margin over the naive blend" in text and "| D | a | outside the curve |" in text
    assert "- m1 a/D/v2: D_t 0.9500 outside the naive curve's D_t range 0.0000–0.6000" in text
    assert "| D | a | 0.100 / 28.00 | 0.300 / 24.00 | 0.700 / 20.00 |" in text  # the mean curve of task a
    table = list(csv.DictReader(io.StringIO(videos_csv(r))))
    m1 = {t["video"]: t for t in table if t["method"] == "m1" and t["task"] == "a"}
    assert float(m1["v1"]["margin"]) == pytest.approx(13.0) and m1["v2"]["margin"] == ""
    assert m1["v1"]["protocol"] == "tdms"


def test_markdown_and_csv_mark_gaps():
    r = rows()
    s = summarise(r, ["m1", "m2"], "processed", use_iou=True)
    text = markdown(s, r, "test")
    assert "## Temporal consistency D_t" in text and "| D | a | 0.2500 | 0.6500 |" in text
    assert "(1 excl.)" in text and "(1 n/e)" in text
    assert "- m2 a/D/v2: psnr" in text  # which value was excluded
    assert "- m2 b/D/v1: error: frame count mismatch (missing frames)" in text
    assert "- no object" in text
    table = list(csv.DictReader(io.StringIO(videos_csv(r))))
    assert len(table) == 9
    bad = [t for t in table if t["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["note"] == "frame count mismatch (missing frames)"
    m1 = [t for t in table if t["method"] == "m1" and t["video"] == "v1" and t["task"] == "a"][0]
    assert float(m1["relative_reduction"]) == pytest.approx(0.5) and float(m1["warping_error_processed"]) == 0.01
