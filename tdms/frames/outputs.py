"""Outputs tdms writes and may later replace: written under a hidden partial name and moved into place when
complete, with a record (the marker) of who made them from what; files tdms did not write are never replaced.

A frame folder holds its record as `.tdms-output.json`; a video has it hidden beside it (`.o.mp4.tdms-output.json`),
with the video's size and mtime so that a video copied over it later counts as foreign.

The marker protocol every tool shares (tdms-test's outputs, tdms-evaluate's report folders, the dataset builder's
roots): read_record / write_record read and atomically write a marker's JSON object, and claim_folder makes a
folder the tool's to write (new, empty, or holding its marker), refusing a folder of other files with one message.
"""

import glob
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tdms.errors import UserError
from tdms.files import stamp_files, write_bytes_atomic
from tdms.frames.io import FrameSource, FrameWriter, is_video

MARKER = ".tdms-output.json"  # marks a folder tdms wrote, the only kind --redo may replace


def read_record(path: Path) -> dict | None:
    """The JSON object a marker file holds; None when there is no such file. Anything else there is an error."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a tdms marker ({err}); remove it or choose another folder") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a tdms marker (not a JSON object); remove it or choose another folder")
    return record


def write_record(path: Path, record: dict) -> None:
    """Write a marker through a temp file renamed over it: a kill leaves the old record or the new one."""
    write_bytes_atomic(path, (json.dumps(record, indent=1) + "\n").encode())


def refuse_foreign(out: Path, names: list[str], who: str, marker: str) -> None:
    """The one refusal of a folder that holds files `who` did not write (names: those files, sorted)."""
    if names:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise UserError(f"{out}: not empty and not written by {who} (it holds {', '.join(names[:5])}{more}; no "
                         f"{marker}); refusing to write into it: choose a new or empty folder")


def claim_folder(out: Path, marker: str, who: str, foreign=None) -> bool:
    """Make `out` a folder `who` may write into: create it, or accept it empty or holding `marker`; returns whether
    it holds the marker (the caller then checks what the record says). An unmarked folder holding anything that
    `foreign(out)` names (default: everything in it) is refused. The caller writes its marker (write_record)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder")
    if (out / marker).is_file():
        return True
    if out.is_dir():
        refuse_foreign(out, sorted(foreign(out) if foreign else (p.name for p in out.iterdir())), who, marker)
    out.mkdir(parents=True, exist_ok=True)
    return False


def marker_path(out: Path) -> Path:
    """Where an output's record lies: inside a frame folder, or hidden beside a video (.o.mp4.tdms-output.json)."""
    return out.with_name(f".{out.name}{MARKER}") if is_video(out) else out / MARKER


def video_stamp(video: Path) -> list[int]:
    st = video.stat()
    return [st.st_size, st.st_mtime_ns]


def read_marker(out: Path) -> dict:
    """What a finished output records (method, checkpoint, inputs, frames, ...); {} when there is none, or when a
    video was replaced after tdms wrote it (its record names the video's size and mtime)."""
    try:
        marker = read_record(marker_path(out)) or {}
        if is_video(out) and marker.get("video") != video_stamp(out):
            return {}
        return marker
    except (OSError, UserError):
        return {}


# what an output depends on: the maker (method, weights digest, options, frame format) and the inputs
MAKER_KEYS = ("method", "checkpoint_sha256", "flow", "lambda", "format", "input", "processed", "inputs_sha256")


def input_identity(src_i: FrameSource, src_p: FrameSource) -> dict:
    """The inputs as is_complete compares them: resolved paths and a digest of each frame file's (or video's)
    name, size and mtime_ns, so frames edited in place count as other inputs (content is not read)."""
    h = hashlib.sha256()
    for src in (src_i, src_p):
        h.update(f"{src.path.resolve()}|".encode())
        stamp_files(h, src.paths or [src.path])
    return {"input": str(src_i.path.resolve()), "processed": str(src_p.path.resolve()),
            "inputs_sha256": h.hexdigest()[:16]}


def is_complete(out: Path, n: int, made_by: dict | None = None) -> bool:
    """A finished tdms output of n frames (folder with the marker, or a video with its record beside it). With
    `made_by`, it counts only if the record names the same maker and inputs (MAKER_KEYS)."""
    marker = read_marker(out)
    if marker.get("frames") != n:
        return False
    return made_by is None or all(marker.get(k) == made_by.get(k) for k in MAKER_KEYS)


FRAME_NAME = re.compile(r"\d{5}\.(png|jpg)")  # the frames a tdms output folder holds


def foreign_files(out: Path) -> list[str]:
    """Names in an output folder that tdms did not write (anything but %05d frames and the marker)."""
    return sorted(p.name for p in out.iterdir()
                  if p.name != MARKER and not (p.is_file() and FRAME_NAME.fullmatch(p.name)))


def check_replaceable(out: Path) -> None:
    """Refuse an output that tdms could never replace: a file that is not a video, a video without tdms's record,
    a non-empty folder without the marker. Nothing there, or an empty folder, is fine."""
    if not out.exists():
        return
    if is_video(out):
        if not out.is_file():
            raise UserError(f"{out}: exists and is not a video file; choose another output")
        if not read_marker(out):
            raise UserError(f"{out}: a video tdms did not write (no {marker_path(out).name} beside it that matches "
                             f"it), not replaced even with --redo; move it away or choose another output")
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (nor a .mp4/.avi video); choose another output")
    if not (out / MARKER).is_file():
        refuse_foreign(out, sorted(p.name for p in out.iterdir()), "tdms", MARKER)


def prepare_output(out: Path, inputs: list, redo: bool):
    """Refuse to touch anything that is an input or that tdms did not write (an empty folder is fine), and a
    tdms output unless redo (and then not if the user put files of their own in it)."""
    check_output(out, inputs)
    check_replaceable(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    extra = foreign_files(out) if out.is_dir() else []
    if extra:
        raise UserError(f"{out}: holds files tdms did not write ({', '.join(extra[:5])}"
                         f"{', ...' if len(extra) > 5 else ''}); move them away, or choose another output")
    if not redo:
        marker = read_marker(out)
        made = ", ".join(f"{k} {marker[k]}" for k in ("method", "checkpoint", "frames") if k in marker)
        raise UserError(f"{out}: holds an earlier output{f' ({made})' if made else ''} that this run does not "
                         f"reuse (another method, other weights or options, other inputs or another frame count): "
                         f"pass --redo to replace it, or choose another output")


def process_video(frames, out: Path, n: int, fps: float, meta: dict, ext: str = ".png", quality=None,
                  desc: str = "") -> dict:
    """Write the generator `frames` to out (folder or video) through a hidden partial, moved into place when
    complete. An exception removes the partial; a killed run leaves it, and the next run removes it."""
    tmp = partial_path(out)
    remove_partial(out)
    start = time.time()
    q: queue.Queue = queue.Queue(8)
    errors: list[BaseException] = []

    def write():
        ended = False
        try:
            with FrameWriter(tmp, fps=fps, ext=ext, quality=quality) as w:
                while (img := q.get()) is not None:
                    w.write(np.clip(img, 0.0, 1.0))
                ended = True
        except BaseException as e:
            errors.append(e)
            while not ended and q.get() is not None:  # drain so the producer never blocks
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        try:
            for img in tqdm(frames, total=n, desc=desc or out.name, unit="frame", leave=False):
                if errors:
                    break
                q.put(img)
        finally:
            q.put(None)
            writer.join()
        if errors:
            raise errors[0]
        meta = {**meta, "frames": n, "seconds": round(time.time() - start, 3)}
        commit(tmp, out, meta)
    except BaseException:  # KeyboardInterrupt too: no partial output stays behind
        remove_partial(out)
        raise
    return meta


def partial_path(out: Path) -> Path:
    """The hidden folder (or video) an output is written into until it is complete: .o.partial, .o.partial.mp4."""
    return out.with_name(f".{out.stem}.partial{out.suffix}" if is_video(out) else f".{out.name}.partial")


def remove_partial(out: Path) -> None:
    """Delete out's partial output, and for a video the PID-named temp files FrameWriter leaves when killed."""
    tmp = partial_path(out)
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    if is_video(out):  # FrameWriter writes the partial video as ..o.partial.<pid>.partial.mp4
        for p in out.parent.glob(f"{glob.escape(f'.{tmp.stem}')}.*.partial{glob.escape(out.suffix)}"):
            if re.fullmatch(rf"{re.escape(f'.{tmp.stem}')}\.\d+\.partial{re.escape(out.suffix)}", p.name):
                p.unlink(missing_ok=True)


def commit(tmp: Path, out: Path, meta: dict) -> None:
    """Move a finished output into place with its record, replacing an older tdms output (never a user's files)."""
    if is_video(out):
        os.replace(tmp, out)
        write_record(marker_path(out), {**meta, "video": video_stamp(out)})  # a video copied over out has none
        return
    write_record(tmp / MARKER, meta)
    if out.is_dir():
        if extra := foreign_files(out):
            raise UserError(f"{out}: files tdms did not write appeared during the run ({', '.join(extra[:5])}); "
                             f"the new output stays in {tmp}")
        shutil.rmtree(out)
    os.replace(tmp, out)


def check_output(out, inputs) -> None:
    """ValueError if out equals an input, lies inside one, or contains one (after resolving links)."""
    out = Path(out).resolve()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    for inp in inputs:
        inp = Path(inp).resolve()
        if out == inp:
            raise UserError(f"output {out} is the input itself")
        if inp in out.parents:
            raise UserError(f"output {out} lies inside input {inp}")
        if out in inp.parents:
            raise UserError(f"output {out} contains input {inp}")
