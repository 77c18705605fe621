"""Writing files so that a crash, a kill or a full disk never leaves a half-written file in place."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CharloomError


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder.

    Readers see the old file or the new one, never a mix; on failure the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CharloomError(f"{path}: cannot save ({e.strerror or e}); the previous file, if any, is kept") from None
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is already atomic


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
