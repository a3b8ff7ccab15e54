"""The README and the docs/ pages say what the code does: every ```python block runs (in order, in one namespace
per page, from a scratch folder), and every link, repository path and `tdms.` name they give exists."""

import importlib
import re
from pathlib import Path

import pytest

from tdms import api

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
CARDS = [ROOT / "checkpoints" / "README.md", ROOT / "data" / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.$~-])((?:tdms|scripts|tests|configs|checkpoints|data|docs)/[\w/.-]*\.(?:py|sh|yaml|md))\b")
NAME = re.compile(r"(?<![\w./-])tdms(?:\.[A-Za-z_]\w*)+")

# What a page's blocks print, where the output says they did what the prose claims.
PRINTS = {"README.md": ["D_t = "], "api.md": ["O.mp4", "looks channel-first (T,3,H,W); pass (T,H,W,3)"]}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of each ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def resolves(name: str) -> bool:
    """Whether a dotted name like tdms.frames.writers.FrameWriter is a module, or an attribute of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def layout_section() -> str:
    text = README.read_text()
    section = text[text.index("\n## Layout\n"):]
    return section[: section.find("\n## ", 1)]


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """The shipped checkpoint if it is there, else a small random one in its place (the lead trains the real one)."""
    if not (api.CHECKPOINTS / f"{api.SHIPPED}.pth").is_file():
        from tests.test_api import save_ckpt  # here, so the other checks of this file run whatever test_api holds

        folder = tmp_path / "checkpoints"
        save_ckpt(folder / f"{api.SHIPPED}.pth")
        monkeypatch.setattr(api, "CHECKPOINTS", folder)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n")
    assert blocks == [(3, "a = 1\n"), (9, "b = 2\nc = 3\n")]


def test_the_api_page_shows_every_public_call():
    code = "".join(code for _, code in python_blocks((ROOT / "docs" / "api.md").read_text()))
    for call in ("tdms.load_model(", "tdms.stabilize(", "tdms.stabilize_iter(", "tdms.warping_error(",
                 "tdms.relative_reduction(", "tdms.scores(", "torch.hub.load("):
        assert call in code, f"docs/api.md has no runnable example of {call}"


@pytest.mark.slow  # the blocks run the shipped network: about 10 s for the README, a minute for docs/api.md (2 cores)
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())], ids=lambda p: p.name)
def test_every_python_block_runs(page, tmp_path, monkeypatch, shipped, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace = {"__name__": "__docs__"}
    for line, code in python_blocks(page.read_text()):
        # padded so a traceback names the page's own line numbers
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
    out = capsys.readouterr().out
    for text in PRINTS.get(page.name, []):
        assert text in out, f"{page.name}'s blocks did not print {text!r}"


def test_the_readme_and_the_api_page_have_python_blocks():
    assert python_blocks(README.read_text()) and python_blocks((ROOT / "docs" / "api.md").read_text())


@pytest.mark.parametrize("page", PAGES + CARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_paths_and_names_exist(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if "://" not in target and not target.startswith("#"):
            assert (page.parent / target.split("#")[0]).exists(), f"{page.name} links to a missing {target}"
    for path in PATH.findall(text):
        assert (ROOT / path).exists(), f"{page.name} names a missing {path}"
    for name in NAME.findall(text):
        assert resolves(name), f"{page.name} names {name}, which is no module or attribute"
    assert not re.search(r"(DESIGN|STYLE) §", text), f"{page.name} cites a document the repository does not hold"


def test_the_layout_lists_every_module():
    section = layout_section()
    listed = set(re.findall(r"^\s*(tdms/[\w/]+\.py)\b", section, re.M))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tdms").rglob("*.py") if p.read_text().strip()}
    assert modules - listed == set(), "README's Layout names no job for these modules"
    assert listed - modules == set(), "README's Layout lists modules that do not exist"
    for script in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "scripts" / "bench").glob("*.*")]:
        assert script.name in section, f"README's Layout does not name scripts/{script.relative_to(ROOT / 'scripts')}"
