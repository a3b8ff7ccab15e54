"""scripts/demo.py's output (issue 16, item 9): one line per step, each note once, a legend under the table.
(Named test_tracking_* only because of who owned which file when it was written; it tests the demo.)"""

import importlib.util
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noisy(argv):
    print("| table |")
    for _ in tqdm(range(50), desc="frames"):
        pass
    print("something went wrong" if argv else "", file=sys.stderr)
    return 1 if argv else 0


def test_a_step_prints_one_line_and_logs_the_rest(demo, tmp_path, capsys):
    log = tmp_path / "demo.log"
    demo.step("tdms-test", noisy, [], log)
    out, err = capsys.readouterr()
    assert out.startswith("tdms-test ... ") and out.endswith(" s\n") and out.count("\n") == 1 and err == ""
    assert "| table |" in log.read_text() and "frames" in log.read_text()
    with pytest.raises(SystemExit) as stop:
        demo.step("tdms-evaluate", noisy, ["fail"], log)
    message = str(stop.value.code)
    assert "something went wrong" in message and "demo: tdms-evaluate failed" in message
    assert "frames: 100%" in message and "frames:   0%" not in message  # a bar: only its last state


def test_notes_are_printed_once_and_the_columns_explained(demo):
    note = "LPIPS (alex) needs torchvision's ImageNet backbone file " + "x" * 250
    metrics = {"tdms": {"lpips_note": note, "composite_note": "needs lpips", "psnr": 30.0},
               "naive": {"lpips_note": note, "composite_note": "needs lpips", "tracking_note": ""}}
    assert demo.notes(metrics) == [f"lpips: {note}", "composite: needs lpips"]
    legend = "\n".join(demo.LEGEND)
    for column in ("E_warp", "D_t", "PSNR", "SSIM"):
        assert any(line.startswith(column) and ("lower =" in line or "higher =" in line) for line in demo.LEGEND)
    assert "lower = less flicker" in legend
