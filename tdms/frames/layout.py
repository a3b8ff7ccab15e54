"""Lai et al.'s data layout, read in one place for training, dataset-mode inference and batch evaluation:

    <root>/<phase>/input/<dataset>/<video>/%05d.jpg
    <root>/<phase>/processed/<task>/<dataset>/<video>/%05d.jpg
    <root>/lists/<dataset>_<phase>.txt          one video name a line
    <root>/lists/<phase>_tasks.txt              "<dataset> <task>" a line
"""

from dataclasses import dataclass
from pathlib import Path

from tdms.errors import MissingFile, UserError


def read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingFile(f"list file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def read_tasks(path: Path) -> list[tuple[str, str]]:
    """'<dataset> <task>' a line."""
    pairs = []
    for n, line in enumerate(read_list(path), 1):
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}:{n}: expected '<dataset> <task>', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def tasks_file(root: Path, phase: str, given: str = "") -> Path:
    """The task list to read: `given` as a path (or, when no such file exists, relative to root), by default
    <root>/lists/<phase>_tasks.txt."""
    if not given:
        return Path(root) / "lists" / f"{phase}_tasks.txt"
    path = Path(given)
    return path if path.is_absolute() or path.exists() else Path(root) / path


@dataclass(frozen=True)
class Entry:
    """One (task, dataset, video) of a phase: its original and processed frame folders."""

    dataset: str
    task: str
    video: str
    input: Path
    processed: Path

    @property
    def name(self) -> str:
        return f"{self.task}/{self.dataset}/{self.video}"

    def under(self, root) -> Path:
        """Where this video's results lie in a tree of <task>/<dataset>/<video>/ folders (outputs, methods)."""
        return Path(root) / self.task / self.dataset / self.video


def entries(root, phase: str, tasks: Path) -> list[Entry]:
    """Every "<dataset> <task>" line of `tasks` times the videos of <root>/lists/<dataset>_<phase>.txt, in order.
    Nothing is checked on disk here: each caller says what a missing folder means to it."""
    root = Path(root)
    out = []
    for dataset, task in read_tasks(tasks):
        for video in read_list(root / "lists" / f"{dataset}_{phase}.txt"):
            out.append(Entry(dataset, task, video, root / phase / "input" / dataset / video,
                             root / phase / "processed" / task / dataset / video))
    return out
