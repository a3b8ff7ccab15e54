"""Writing files so that a kill never leaves half of one, and cheap fingerprints of files that were read."""

import hashlib
import io
import math
import os
import tempfile
from pathlib import Path

import torch


def stamp_files(digest, files) -> None:
    """Feed each file's name, byte size and mtime_ns to `digest` (a hashlib object): a cheap stand-in for the files'
    content (a file edited in place changes it) that reads none of them. Callers hash the folder themselves."""
    for f in files:
        st = os.stat(f)
        digest.update(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns};".encode())


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (read in 1 MB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def write_bytes_atomic(path, data: bytes) -> None:
    """Write to a hidden temp file beside path, then rename over it: readers never see half a file.

    The file gets the usual mode (0666 less the umask), not the 0600 of a private temp file, so a checkpoint
    stays readable to the rest of a shared group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_atomic(obj, path) -> None:
    """torch.save `obj` to path through write_bytes_atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def json_safe(x, null: bool = False):
    """Non-finite floats as the strings "nan", "inf", "-inf" (as null with `null`, for reports people read), tuples
    as lists, so the JSON stays strict."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if null else str(x)
    if isinstance(x, dict):
        return {k: json_safe(v, null) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v, null) for v in x]
    return x


def from_json_safe(x):
    """The inverse of json_safe: "nan", "inf", "-inf" back to floats."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: from_json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_json_safe(v) for v in x]
    return x
