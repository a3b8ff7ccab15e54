"""Every ```python block of README.md runs, in order and in one namespace, from a scratch folder."""

import re
from pathlib import Path

import pytest

from tdms import api
from tests.test_api import save_ckpt

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of each ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """The shipped checkpoint if it is there, else a small random one in its place (the lead trains the real one)."""
    if not (api.CHECKPOINTS / f"{api.SHIPPED}.pth").is_file():
        folder = tmp_path / "checkpoints"
        save_ckpt(folder / f"{api.SHIPPED}.pth")
        monkeypatch.setattr(api, "CHECKPOINTS", folder)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n")
    assert blocks == [(3, "a = 1\n"), (9, "b = 2\nc = 3\n")]


def test_the_api_section_shows_every_public_call():
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.find("\n## ", 1)]
    code = "".join(code for _, code in python_blocks(section))
    for call in ("tdms.load_model(", "tdms.stabilize(", "tdms.stabilize_iter(", "tdms.warping_error(",
                 "tdms.relative_reduction(", "tdms.scores(", "torch.hub.load("):
        assert call in code, f"README's Python API section has no runnable example of {call}"


def test_every_python_block_runs(tmp_path, monkeypatch, shipped, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python blocks"
    namespace = {"__name__": "__readme__"}
    for line, code in blocks:
        # padded so a traceback names README.md's own line numbers
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "O.mp4" in out and "looks channel-first (T,3,H,W); pass (T,H,W,3)" in out
