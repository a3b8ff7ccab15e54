"""Tables of a batch evaluation: per-video rows -> per-task and overall means per method, in Markdown and JSON.

Means are unweighted over videos (per task) and over tasks (per dataset), as the field reports them.
The margin over the naive blend (tdms.evaluation.tradeoff) is per video, and per task (dataset) that of the mean
point against the mean curve of the same videos (tasks): the number one reads off the trade-off chart.
A value that is None or NaN is never averaged in silently: it is left out and counted in `excluded`,
and videos that could not be evaluated are counted in `not_evaluated`; both show in the tables.
"""

import csv
import io
import math

from tdms.evaluation.tradeoff import curve_text, margin, mean_curve, mean_point
from tdms.evaluation.video import add_derived

# (key, title) of the tables, the paper's three first (TDMS Tables 1-3), then the raw numbers.
TABLES = (
    ("relative_reduction", "Temporal consistency D_t = 1 - E(method)/E(processed) (higher is better)"),
    ("tracking_iou", "Tracking IoU (higher is better)"),
    ("composite", "Composite 0.25(1-LPIPS) + 0.25 IoU + 0.5 D_t, or 0.5(1-LPIPS) + 0.5 D_t (higher is better)"),
    ("warping_error", "Warping error E_warp (lower is better)"),
    ("lpips", "LPIPS to the processed video (lower is better)"),
    ("psnr", "PSNR to the processed video, dB"),
    ("ssim", "SSIM to the processed video"),
)
METRICS = tuple(k for k, _ in TABLES)
MARGIN_TITLE = "Margin over the naive blend, dB: PSNR − the blend curve's PSNR at the method's D_t (higher is better)"
CSV_COLUMNS = ("method", "protocol", "dataset", "task", "video", "status", "n_frames", "warping_error_processed"
               ) + METRICS + ("margin", "seconds", "note")



def mean_of(values) -> tuple[float | None, int]:
    """(mean of the values that are not None/NaN, how many were left out); inf stays (PSNR of equal frames)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return (sum(kept) / len(kept) if kept else None), len(values) - len(kept)


def add_relative(rows: list[dict], processed: str, use_iou: bool) -> None:
    """D_t, composite and margin of every method row from the processed row of the same video (its E_warp and its
    naive blend curve)."""
    e_p = {(r["dataset"], r["task"], r["video"]): r.get("warping_error") for r in rows
           if r["method"] == processed and r["status"] == "ok"}
    curves = video_curves(rows, processed)
    for r in rows:
        if r["method"] == processed or r["status"] != "ok":
            continue
        e = e_p.get((r["dataset"], r["task"], r["video"]))
        if e is None:
            r.update(relative_reduction=None, composite=None, note="processed video not evaluated: no D_t")
        else:
            add_derived(r, e, use_iou)
            r["margin"], note = margin(r["relative_reduction"], r.get("psnr"),
                                       curves.get((r["dataset"], r["task"], r["video"])))
            if note:
                r["margin_note"] = note


def video_curves(rows: list[dict], processed: str) -> dict:
    """{(dataset, task, video): the naive blend curve} from the processed rows that have one."""
    return {(r["dataset"], r["task"], r["video"]): r["blend_curve"] for r in rows
            if r["method"] == processed and r["status"] == "ok" and r.get("blend_curve")}


def present(value) -> bool:
    """A value the means keep: not None, not NaN (inf stays: the PSNR of equal frames)."""
    return value is not None and not math.isnan(value)


def add_margins(rows: list[dict], tasks: dict, overall: dict, processed: str) -> dict:
    """Set "margin" (and "tradeoff": mean point, mean curve) of every task and overall entry; return the curves of
    all videos per (dataset, task) and, over the tasks, per (dataset, "mean"), which the trade-off charts draw."""
    curves = video_curves(rows, processed)
    tasks = {k: v for k, v in tasks.items() if k[0] != processed}  # the processed videos have no margin
    overall = {k: v for k, v in overall.items() if k[0] != processed}
    for key, entry in tasks.items():
        videos = [r for r in rows if (r["method"], r["dataset"], r["task"]) == key and r["status"] == "ok"]
        entry["tradeoff"] = mean_point([(r["relative_reduction"], r["psnr"], curves[(*key[1:], r["video"])])
                                        for r in videos if present(r.get("relative_reduction"))
                                        and present(r.get("psnr")) and (*key[1:], r["video"]) in curves])
    for (method, dataset), entry in overall.items():
        mine = [v["tradeoff"] for (m, d, _), v in tasks.items() if (m, d) == (method, dataset)]
        entry["tradeoff"] = mean_point([(t["relative_reduction"], t["psnr"], t["curve"]) for t in mine if "curve" in t])
    for entry in (*tasks.values(), *overall.values()):
        entry["margin"] = entry["tradeoff"]["margin"]
    out = {}
    for (dataset, task, _), curve in curves.items():
        out.setdefault((dataset, task), []).append(curve)
    out = {key: mean_curve(c) for key, c in out.items()}
    for dataset in dict.fromkeys(d for d, _ in out):
        out[(dataset, "mean")] = mean_curve([c for (d, _), c in out.items() if d == dataset])
    return out


def protocols(rows: list[dict], methods: list[str]) -> dict:
    """{method: the protocol its results were made with (tdms-test's marker), "mixed: a, b" when they differ}."""
    out = {}
    for method in methods:
        seen = sorted({r["protocol"] for r in rows if r["method"] == method and r.get("protocol")})
        out[method] = seen[0] if len(seen) == 1 else ("mixed: " + ", ".join(seen) if seen else None)
    return out


def group_means(rows: list[dict], keys: tuple) -> dict:
    """{group key: {"videos", "not_evaluated", metric: mean, "excluded": {metric: count}}} over rows grouped by keys."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = {}
    for key, members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        entry = {"videos": len(ok), "not_evaluated": len(members) - len(ok), "excluded": {}}
        for m in METRICS:
            present = [r.get(m) for r in ok if m in r]
            entry[m], excluded = mean_of(present) if present else (None, 0)
            if excluded and excluded < len(present):  # a wholly missing metric is just absent
                entry["excluded"][m] = excluded
        out[key] = entry
    return out


def summarise(rows: list[dict], methods: list[str], processed: str, use_iou: bool) -> dict:
    """Per (method, dataset, task) means, per (method, dataset) means over tasks, and the tables."""
    add_relative(rows, processed, use_iou)
    tasks = group_means(rows, ("method", "dataset", "task"))
    overall = {}
    for method, dataset in dict.fromkeys((m, d) for m, d, _ in tasks):
        mine = [v for (m, d, _), v in tasks.items() if (m, d) == (method, dataset)]
        entry = {"videos": sum(t["videos"] for t in mine), "not_evaluated": sum(t["not_evaluated"] for t in mine),
                 "excluded": {}}
        for m in METRICS:
            entry[m], excluded = mean_of([t[m] for t in mine])
            if excluded and excluded < len(mine):
                entry["excluded"][m] = excluded
        d_t = [t["relative_reduction"] for t in mine if t["relative_reduction"] is not None]
        entry["relative_reduction_sum"] = sum(d_t) if d_t else None  # TDMS Table 1 sums D_t over tasks
        overall[(method, dataset)] = entry
    curves = add_margins(rows, tasks, overall, processed)
    return {"methods": methods, "protocols": protocols(rows, methods), "tasks": tasks, "overall": overall,
            "curves": curves, "tables": tables(tasks, overall, methods, processed)}


def tables(tasks: dict, overall: dict, methods: list[str], processed: str) -> dict:
    """{metric: [{"dataset", "task", <method>: value, ...}]}: one row per task, then "mean" (and "sum" for D_t)."""
    out = {}
    task_keys = list(dict.fromkeys((d, t) for _, d, t in tasks))
    datasets = list(dict.fromkeys(d for d, _ in task_keys))
    for metric, _ in TABLES:
        columns = ([processed] if metric == "warping_error" else []) + methods
        rows = [{"dataset": d, "task": t, **{m: tasks.get((m, d, t), {}).get(metric) for m in columns}}
                for d, t in task_keys]
        rows += [{"dataset": d, "task": "mean", **{m: overall.get((m, d), {}).get(metric) for m in columns}}
                 for d in datasets]
        if metric == "relative_reduction":
            rows += [{"dataset": d, "task": "sum", **{m: overall.get((m, d), {}).get("relative_reduction_sum")
                                                      for m in columns}} for d in datasets]
        out[metric] = rows
    out["margin"] = [{"dataset": d, "task": t, **{m: tasks.get((m, d, t), {}).get("margin") for m in methods}}
                     for d, t in task_keys]
    out["margin"] += [{"dataset": d, "task": "mean", **{m: overall.get((m, d), {}).get("margin") for m in methods}}
                      for d in datasets]
    return out


def fmt(value) -> str:
    """4 decimals; 3 significant digits for small non-zero values such as warping errors (0.00274)."""
    if value is None:
        return "–"
    return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.4f}"


def table_markdown(summary: dict, metric: str, heading: str) -> str:
    """One table as Markdown; a cell says how many values it left out (excl.) and videos it lacks (n/e)."""
    table = summary["tables"][metric]
    columns = [c for c in table[0] if c not in ("dataset", "task")] if table else []
    lines = [f"## {heading}\n", "| dataset | task | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in table:
        cells = []
        for m in columns:
            counts = summary["tasks"].get((m, r["dataset"], r["task"])) or {}
            if r["task"] == "mean":
                counts = summary["overall"].get((m, r["dataset"]), {})
            flags = counts.get("excluded", {}).get(metric, 0) if r["task"] != "sum" else 0
            missing = counts.get("not_evaluated", 0) if r["task"] != "sum" else 0
            marks = (f" ({flags} excl.)" if flags else "") + (f" ({missing} n/e)" if missing else "")
            cells.append(fmt(r[m]) + marks)
        lines.append(f"| {r['dataset']} | {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict, rows: list[dict], title: str) -> str:
    """The methods and their protocols, all tables, the margins and the blend's curve, then the excluded values and
    the videos not evaluated, as one Markdown document."""
    parts = [f"# {title}\n", methods_markdown(summary)]
    parts += [table_markdown(summary, metric, heading) for metric, heading in TABLES]
    parts += [margin_markdown(summary), curve_markdown(summary)]
    outside = [f"- {r['method']} {r['task']}/{r['dataset']}/{r['video']}: {r['margin_note']}" for r in rows
               if r.get("margin_note")]
    outside += [f"- {m} {t}/{d}: {v['tradeoff']['margin_note']}" for (m, d, t), v in summary["tasks"].items()
                if v.get("tradeoff", {}).get("margin_note")]
    outside += [f"- {m} mean/{d}: {v['tradeoff']['margin_note']}" for (m, d), v in summary["overall"].items()
                if v.get("tradeoff", {}).get("margin_note")]
    if outside:
        parts += ["## Margins not given\n", *outside, ""]
    excluded = [r for r in rows if r["status"] == "ok" and any(
        isinstance(r.get(m), float) and math.isnan(r[m]) for m in METRICS)]
    if excluded:
        parts.append("## Excluded values (NaN, left out of the means)\n")
        parts += [f"- {r['method']} {r['task']}/{r['dataset']}/{r['video']}: " + ", ".join(
            m for m in METRICS if isinstance(r.get(m), float) and math.isnan(r[m])) for r in excluded]
        parts.append("")
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        parts.append("## Videos not evaluated (n/e)\n")
        parts += [f"- {r['method']} {r['task']}/{r['dataset']}/{r['video']}: {r['status']}: {r['note']}"
                  for r in skipped]
        parts.append("")
    if notes(rows):
        parts.append("## Notes\n")
        parts += [f"- {n}" for n in notes(rows)]
        parts.append("")
    return "\n".join(parts)


def key_tables(summary: dict) -> str:
    """The tables a command prints: the paper's three (D_t, tracking IoU, composite), then the margins."""
    return "\n".join([*(table_markdown(summary, metric, heading) for metric, heading in TABLES[:3]),
                      margin_markdown(summary)])


def methods_markdown(summary: dict) -> str:
    """The methods and the test protocol of their results (tdms-test --protocol, from each result's marker)."""
    lines = ["## Methods\n", "| method | protocol |", "|---|---|"]
    lines += [f"| {m} | {summary['protocols'].get(m) or '–'} |" for m in summary["methods"]]
    return "\n".join(lines) + "\n"


def fmt_margin(value) -> str:
    return "–" if value is None else f"{value:+.3f}"


def margin_markdown(summary: dict) -> str:
    """The margin table: one row per task, then the dataset's mean; a cell without a margin says why below."""
    table = summary["tables"]["margin"]
    columns = summary["methods"]
    lines = [f"## {MARGIN_TITLE}\n", "| dataset | task | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for r in table:
        cells = []
        for m in columns:
            entry = (summary["overall"].get((m, r["dataset"])) if r["task"] == "mean"
                     else summary["tasks"].get((m, r["dataset"], r["task"]))) or {}
            note = entry.get("tradeoff", {}).get("margin_note", "")
            cells.append("outside the curve" if "outside" in note else fmt_margin(r[m]))
        lines.append(f"| {r['dataset']} | {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_markdown(summary: dict) -> str:
    """The naive blend's curve (mean over the videos, then the tasks): D_t / PSNR at each a."""
    curves = summary["curves"]
    if not curves:
        return "## Naive blend curve\n\nnone: no processed video was evaluated\n"
    alphas = next(iter(curves.values()))["alphas"]
    lines = ["## Naive blend curve O_t = (1−a)·P_t + a·warp(O_{t−1}), D_t / PSNR dB\n",
             "| dataset | task | " + " | ".join(f"a={a:g}" for a in alphas) + " |", "|---|---|" + "---|" * len(alphas)]
    for (dataset, task), c in curves.items():
        lines.append(f"| {dataset} | {task} | " + " | ".join(t.split(": ")[1] for t in curve_text(c)) + " |")
    return "\n".join(lines) + "\n"


def notes(rows: list[dict]) -> list[str]:
    """The distinct reasons why LPIPS or tracking IoU are missing."""
    return sorted({r[k] for r in rows for k in ("lpips_note", "tracking_note") if r.get(k)})


def videos_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        note = "; ".join(r[k] for k in ("note", "lpips_note", "tracking_note", "composite_note") if r.get(k))
        writer.writerow({**r, "note": note})
    return buf.getvalue()


def jsonable_summary(summary: dict) -> dict:
    """Tuple keys -> records, for JSON."""
    return {
        "methods": summary["methods"],
        "protocols": summary["protocols"],
        "curves": [{"dataset": d, "task": t, **c} for (d, t), c in summary["curves"].items()],
        "tasks": [{"method": m, "dataset": d, "task": t, **v} for (m, d, t), v in summary["tasks"].items()],
        "overall": [{"method": m, "dataset": d, **v} for (m, d), v in summary["overall"].items()],
        "tables": summary["tables"],
    }

