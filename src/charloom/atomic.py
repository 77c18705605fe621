"""Writing files so that a crash, a kill or a full disk never leaves a half-written file in place, and a folder
so that two writers never take turns in it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from .errors import CharloomError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

TMP_MARK = ".tmp-"  # a temporary file is `.NAME.tmp-PID`, beside the file it will replace
_LEFTOVER = re.compile(r"\..+" + re.escape(TMP_MARK) + r"(\d+)(-\w+)?")  # a folder adds `-` and a random part


def temporary_folder(path: Path) -> Path:
    """A new empty folder beside `path`, named so that `remove_leftovers` finds it if its writer is killed
    before renaming it to `path`."""
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}{os.getpid()}-"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder.

    Readers see the old file or the new one, never a mix; on failure the old file is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails the save like a full disk
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # in a folder that cannot be written there is no temporary to remove
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


def stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, modification time, size) of a file, None where there is none: a write here replaces a file whole,
    so a file written again between two stamps never gives the same one twice."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or no way to tell: leave its file alone
    return True


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files and folders in `folder` that writers killed mid-write left behind (their
    process is gone, so no rename will ever claim them); a live process's are kept. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _LEFTOVER.fullmatch(p.name)
        if m and not p.is_symlink() and not _alive(int(m.group(1))):
            try:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                pass  # gone already, or not ours to remove: the run itself never reads it
    return removed


LOCK_FILE = ".charloom.lock"  # in a run folder: held by the run writing it


def hold_folder(folder: Path, what: str) -> IO[str] | None:
    """Hold `folder` for one writer: an exclusive lock on its LOCK_FILE, released when the returned file is closed
    or the process ends, however it ends. A second writer is refused in one line naming `what` (the option that
    chose the folder) and the holder's process id. None where the system has no such locks (Windows)."""
    if fcntl is None:
        return None
    path = Path(folder) / LOCK_FILE
    f = open(path, "a+", encoding="ascii")  # a+: never truncates what the holder wrote
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read(32).strip()
        f.close()
        raise CharloomError(f"{what}: {folder} is being written by another run"
                            f"{f' (process {holder})' if holder.isdigit() else ''}; wait for it to end, or choose "
                            f"another folder") from None
    except OSError:  # a file system without locks (some network mounts): run unguarded, as before
        f.close()
        return None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f
