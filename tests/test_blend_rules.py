"""scripts/blend_rules.py on cases whose answer is known: with no pixel marked occluded the occlusion rule is the
naive blend itself, so scored by tdms-evaluate's loop it sits on the curve (margin 0); with the real forward-backward
test a pan's uncovered border is switched off, which can only gain."""

import importlib.util
import re
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "blend_rules.py"


def margins(module, root, capsys) -> dict[str, float]:
    module.main(["--data", str(root), "--phase", "test", "--alphas", "0.5"])
    out = capsys.readouterr().out
    assert "2 videos" in out
    rows = dict(re.findall(r"^\s+((?:occlusion(?:\+frame)?|gate) a=0\.5)\s.*margin ([+-]\d+\.\d+) dB", out, re.M))
    assert set(rows) == {"occlusion a=0.5", "gate a=0.5", "occlusion+frame a=0.5"}, out
    return {k: float(v) for k, v in rows.items()}


def test_the_occlusion_rule_without_occlusion_is_the_blend(lai_root, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("blend_rules", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert margins(module, lai_root, capsys)["occlusion a=0.5"] > 0  # the border the pan uncovers
    monkeypatch.setattr(module, "occlusion_mask", lambda fw, bw: torch.zeros_like(fw[:, :1]))
    assert margins(module, lai_root, capsys)["occlusion a=0.5"] == 0.0
    # the gate rule: with neither occlusion nor a flow leaving the frame it is the blend too
    monkeypatch.setattr("tdms.nets.tdms_net.leaves_frame", lambda flow: torch.zeros_like(flow[:, :1]))
    assert margins(module, lai_root, capsys)["gate a=0.5"] == 0.0
