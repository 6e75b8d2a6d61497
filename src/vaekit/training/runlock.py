"""One writer per run directory: an exclusive lock held for the whole of a training run.

Two processes writing one run (a second ``--resume``, or a fresh ``train --out`` onto a run in progress)
interleave ``metrics.jsonl`` and pair one process's training state with the other's weights. The lock is an
``flock`` on ``<run>/.vaekit-lock``: the kernel releases it when the holder exits, however it exits, so a run
killed by SIGKILL or a power cut never stays locked. The file records the holder's PID and host so that the
refused process can name it; it is never removed, because unlinking a lock file that another process has just
opened would let two processes each lock a different file.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vaekit.errors import TrainingError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked there
    fcntl = None

log = logging.getLogger(__name__)

LOCK_FILE = ".vaekit-lock"


@contextmanager
def held(directory: Path, create: bool) -> Iterator[None]:
    """Hold the run directory's lock for the block; a TrainingError naming the holder if another process has it.

    ``create`` makes the directory first (a new run); without it a missing directory is left for the caller to
    report (a resume of a path that does not exist must not create it).
    """
    if create:
        make_run_directory(directory)
    elif not directory.is_dir():
        yield
        return
    fd = _acquire(directory / LOCK_FILE)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock


def make_run_directory(directory: Path) -> None:
    """``directory`` created if missing; a TrainingError naming it if it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TrainingError(f"the run directory {directory} is a file, not a folder: choose another --out") from None
    except OSError as e:
        raise TrainingError(f"cannot write the run directory {directory}: {e.strerror or e}") from None


def _acquire(path: Path) -> int | None:
    """A descriptor holding the exclusive lock on ``path`` (None where locks are not available)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise TrainingError(f"cannot write the run directory {path.parent}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise TrainingError(f"{path.parent} is being written by another training process ({holder}): one run "
                            "directory takes one writer. Wait for it to end (or stop it), then continue with "
                            f"`vaekit train --resume {path.parent}`") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says."""
    try:
        pid, _, host = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    except OSError:
        pid, host = "", ""
    return f"PID {pid} on {host}" if pid.isdigit() else "its PID was not recorded"
