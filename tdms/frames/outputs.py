"""Outputs tdms writes and may later replace: written under a hidden partial name and moved into place when
complete, with a record (the marker) of who made them from what; files tdms did not write are never replaced.

A frame folder holds its record as `.tdms-output.json`, with the name, size and SHA-256 of every frame it wrote so
that --redo never overwrites a frame the user edited; a video has it hidden beside it (`.o.mp4.tdms-output.json`),
with the video's size and mtime so that a video copied over it later counts as foreign. A frame folder's partial
holds a record of its maker too, so that a run killed midway is resumed by the same maker (resume_point).

The marker protocol every tool shares (tdms-test's outputs, tdms-evaluate's report folders, the dataset builder's
roots): read_record / write_record read and atomically write a marker's JSON object, and claim_folder makes a
folder the tool's to write (new, empty, or holding its marker), refusing a folder of other files with one message.
"""

import errno
import glob
import hashlib
import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tdms import interrupts
from tdms.errors import UserError
from tdms.files import stamp_files, write_bytes_atomic
from tdms.frames.io import FrameSource, is_video, read_frame
from tdms.frames.writers import FrameWriter, file_record, write_error

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
    try:
        write_bytes_atomic(path, (json.dumps(record, indent=1) + "\n").encode())
    except OSError as err:
        raise write_error(err, path) from None


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


# what an output depends on: the maker (method, weights digest, precision, protocol, options, frame format) and
# the inputs
MAKER_KEYS = ("method", "checkpoint_sha256", "dtype", "protocol", "flow", "lambda", "deflicker_size", "cut_reset",
              "format", "encoding", "input", "processed", "inputs_sha256")


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


FRAME_NAME = re.compile(r"\d{5,}\.(png|jpg)")  # the frames a tdms output folder holds (%05d, the input's numbers)


def foreign_files(out: Path) -> list[str]:
    """Names in an output folder that tdms did not write (anything but %05d frames and the marker)."""
    return sorted(p.name for p in out.iterdir()
                  if p.name != MARKER and not (p.is_file() and FRAME_NAME.fullmatch(p.name)))


def edited_frames(out: Path) -> list[str]:
    """Frames in a tdms output folder that its record does not list as written by tdms with that size and SHA-256
    (edited or added since; a removed frame loses nothing). Records from before frames were recorded list none."""
    written = read_marker(out).get("files")
    if not isinstance(written, dict):
        return []
    now = sorted(p.name for p in out.iterdir() if p.is_file() and FRAME_NAME.fullmatch(p.name))
    return [name for name in now if written.get(name) != file_record((out / name).read_bytes())]


def refuse_edited(out: Path) -> None:
    if edited := edited_frames(out):
        more = f" and {len(edited) - 5} more" if len(edited) > 5 else ""
        raise UserError(f"{out}: {', '.join(edited[:5])}{more} changed since tdms wrote them (their names, sizes and "
                         f"SHA-256 are in its {MARKER}); not overwritten even with --redo: move them away, or choose "
                         f"another output")


def check_writable(out: Path, beside: bool = True) -> None:
    """Refuse, before any work, an output that could not be written: its partial is made beside it (in the nearest
    existing folder above it) and moved over it, and a folder it replaces must let its files go. `beside`: say
    why in the message (not for dataset mode's root of outputs)."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    needs = {parent: f"tdms writes {out.name} there as {partial_path(out).name} first" if parent == out.parent else
             f"tdms makes {out.parent.relative_to(parent)} there for {out.name}"}
    if out.is_dir() and any(out.iterdir()):
        needs[out] = "its files are replaced"
    for folder, why in needs.items():
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".tdms-probe.")
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise write_error(err, folder) from None
            why = f" ({why})" if beside else ""
            raise UserError(f"cannot write in {folder}: {err.strerror}{why}; choose an output in a writable "
                             f"folder") from None
        os.close(fd)
        os.unlink(probe)


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
    check_writable(out)
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
    if out.is_dir():
        refuse_edited(out)


def process_video(frames, out: Path, n: int, fps: float, meta: dict, ext: str = ".png", quality=None,
                  desc: str = "", numbers: list[int] | None = None, resume: int = 0, encoding=None) -> dict:
    """Write the generator `frames` to out (folder or video) through a hidden partial, moved into place when
    complete; returns the record kept with it. A video is written as `encoding` says (frames.video.Encoding). A
    folder's frames are numbered `numbers` (default 0..n-1); with
    `resume` = k (resume_point), frames 0..k-1 are kept from a killed run's partial and `frames` yields the rest.
    An exception (or Ctrl-C) stops the writer, closes `frames` (its decoding threads stop) and removes the
    partial; a killed run leaves it, for the next run to resume or remove."""
    tmp, folder = partial_path(out), not is_video(out)
    numbers = list(range(n)) if numbers is None else numbers
    names = [f"{k:05d}{ext}" for k in numbers]
    if not resume:
        remove_partial(out)
    kept = keep_partial(out, names[:resume]) if resume else {}
    start = time.time()
    q: queue.Queue = queue.Queue(8)
    errors: list[BaseException] = []
    files: dict = {}
    cancel = threading.Event()

    def write():
        ended = False
        try:
            with FrameWriter(tmp, fps=fps, ext=ext, quality=quality, numbers=numbers[resume:], keep=resume > 0,
                             encoding=encoding) as w:
                if folder:  # the maker of the partial, for a resume
                    write_record(tmp / MARKER, {**meta, "partial": True})
                while (img := q.get()) is not None:
                    if cancel.is_set():
                        raise KeyboardInterrupt  # the producer stopped: abort the video, the partial goes
                    w.write(np.clip(img, 0.0, 1.0))
                ended = True
            files.update(w.files)
        except BaseException as e:
            errors.append(e)
            while not ended and q.get() is not None:  # drain so the producer never blocks
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        try:
            for img in tqdm(frames, total=n - resume, desc=desc or out.name, unit="frame", leave=False):
                if errors:
                    break
                interrupts.check()
                q.put(img)
        except BaseException:
            cancel.set()
            raise
        finally:
            getattr(frames, "close", lambda: None)()  # stop what computes the frames, and its threads
            q.put(None)
            writer.join()
        if errors:
            raise errors[0]
        meta = {**meta, "frames": n, "seconds": round(time.time() - start, 3)}
        commit(tmp, out, meta | ({"files": kept | files} if folder else {}))
    except BaseException:  # KeyboardInterrupt too: no partial output stays behind
        remove_partial(out)
        raise
    return meta


def resume_point(out: Path, made_by: dict, names: list[str]) -> int:
    """How many frames of a killed run's partial folder a run can keep: the first k of `names` if the partial's
    record names the same maker and inputs (MAKER_KEYS); 0 otherwise. Frame files are renamed into place whole, so
    each one there is complete; the last one is also read back."""
    tmp = partial_path(out)
    try:
        record = read_record(tmp / MARKER) if tmp.is_dir() else None
    except UserError:
        return 0
    if not record or not record.get("partial") or any(record.get(k) != made_by.get(k) for k in MAKER_KEYS):
        return 0
    there = {p.name for p in tmp.iterdir()}
    k = next((j for j, name in enumerate(names) if name not in there), len(names))
    if k:
        try:
            read_frame(tmp / names[k - 1])
        except UserError:
            k -= 1
    return k


def keep_partial(out: Path, names: list[str]) -> dict:
    """Keep the frames `names` of out's partial (and its record), remove anything else a kill left there (later
    frames, half-written temp files); returns the kept frames' file records."""
    tmp = partial_path(out)
    for p in tmp.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name not in names and p.name != MARKER:
            p.unlink()
    return {name: file_record((tmp / name).read_bytes()) for name in names}


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
    staged_record(out).unlink(missing_ok=True)
    if is_video(out):  # FrameWriter writes the partial video as ..o.partial.<pid>.partial.mp4
        for p in out.parent.glob(f"{glob.escape(f'.{tmp.stem}')}.*.partial{glob.escape(out.suffix)}"):
            if re.fullmatch(rf"{re.escape(f'.{tmp.stem}')}\.\d+\.partial{re.escape(out.suffix)}", p.name):
                p.unlink(missing_ok=True)


def staged_record(out: Path) -> Path:
    """Where a video's new record is written before the video moves into place: .o.mp4.tdms-output.json.new"""
    return marker_path(out).with_name(f"{marker_path(out).name}.new")


def commit(tmp: Path, out: Path, meta: dict) -> None:
    """Move a finished output into place with its record, replacing an older tdms output (never a user's files).

    Whatever needs disk space (the record) is written first, so a full disk leaves the earlier output as it was;
    then only renames follow. A video's record names its size and mtime (a video copied over it later has none)."""
    if is_video(out):
        write_record(staged_record(out), {**meta, "video": video_stamp(tmp)})  # a rename keeps size and mtime
        os.replace(tmp, out)
        os.replace(staged_record(out), marker_path(out))
        return
    write_record(tmp / MARKER, meta)
    if out.is_dir():
        if extra := foreign_files(out):
            raise UserError(f"{out}: files tdms did not write appeared during the run ({', '.join(extra[:5])}); "
                             f"the new output stays in {tmp}")
        refuse_edited(out)
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
