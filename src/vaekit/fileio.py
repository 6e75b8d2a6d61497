"""Atomic file writes: a temporary file in the same directory, fsync, then rename over the final name.

A process killed at any moment leaves either the old file or the new one under the final name, never a
half-written one. ``crash_point`` is a test hook that lets the kill tests stop a real process at exact places.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

KILL_ENV = "VAEKIT_TEST_KILL_AT"  # "point:n" kills the process the n-th time it reaches crash_point("point")


def _parse_kill_spec(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, n = spec.rpartition(":")
    return (name, int(n)) if name and n.isdigit() and int(n) >= 1 else None


_KILL_AT = _parse_kill_spec(os.environ.get(KILL_ENV))  # read once: the hook sits on the training step's path
_arrivals: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process at its n-th arrival here when $VAEKIT_TEST_KILL_AT is ``name:n``.

    Unset (always, outside the kill tests) it costs one comparison. SIGKILL, not an exception: nothing gets
    to clean up, exactly as when the machine loses power or the out-of-memory killer strikes.
    """
    if _KILL_AT is None or _KILL_AT[0] != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == _KILL_AT[1]:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _plain_open_mode(path))
        fsync_file(Path(tmp))
        crash_point("atomic-replace")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _plain_open_mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would leave: an existing file's own, else 0666 less the umask
    (mkstemp makes its file 0600, which would hide every output from other users and servers)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` fill a temporary file, then move it to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` atomically: a hard link where the file system has them, else a copy."""
    with atomic_path(dst) as tmp:
        try:
            os.unlink(tmp)
            os.link(src, tmp)  # no second copy of the bytes on disk
        except OSError:
            shutil.copyfile(src, tmp)


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and flush it to the disk (for files inside a not-yet-published directory)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk, so that a rename after it never exposes an empty or partial file."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable; not every platform can open a directory, hence the suppress."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
