"""Atomic file writes (a temporary file in the same directory, fsync, then rename over the final name), and
bounded reads of files that may come from someone else.

A process killed at any moment leaves either the old file or the new one under the final name, never a
half-written one. ``crash_point`` is a test hook that lets the kill tests stop a real process at exact places.
``read_regular`` reads only regular files, of at most a given size: a link to /dev/zero or a FIFO in a
checkpoint folder gets an error instead of an unbounded read or a hang; ``parse_json`` turns JSON nested too
deeply for Python's parser into a ValueError like any other bad JSON.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

JSON_LIMIT = 16 * 2**20  # a config, pointer, training state or threshold file is kilobytes; this is far past any
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


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def read_regular(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file (links followed) of at most ``limit`` bytes; else an
    OSError whose strerror says why (a missing file stays a FileNotFoundError)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once instead of waiting
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for is_kind, name in _KINDS if is_kind(st.st_mode)), "something else")
            raise OSError(errno.EINVAL, f"it is {kind}, not a regular file")
        if limit is not None and st.st_size > limit:
            raise OSError(errno.EFBIG, f"it holds {st.st_size} bytes, over the {limit} such a file may hold")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:  # it grew since fstat
            raise OSError(errno.EFBIG, f"it holds more than the {limit} bytes such a file may hold")
        return data
    finally:
        os.close(fd)


def parse_json(blob: bytes | str) -> object:
    """``json.loads``, with JSON nested too deeply for the parser's recursion refused as a ValueError."""
    try:
        return json.loads(blob)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None


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
