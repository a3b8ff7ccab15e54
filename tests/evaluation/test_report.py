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
    assert s["tasks"][("m2", "D", "b")] == {"videos": 0, "not_evaluated": 1, "excluded": {}, **{
        k: None for k in ("relative_reduction", "tracking_iou", "composite", "warping_error", "lpips", "psnr",
                          "ssim")}}
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
