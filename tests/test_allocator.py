"""The command line keeps freed memory for reuse (vaekit/allocator.py): a freed large array stays resident
instead of going back to the system, so the next step's arrays need no fresh page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from vaekit import allocator
from vaekit.cli import main

RESIDENT_AFTER_FREE = """
import sys
from vaekit import allocator
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

block = bytearray(24 * 2**20)  # above glibc's default mmap threshold, below the raised one
before_free = resident()
del block
print(kept, (before_free - resident()) / 2**20)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def released_mib(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@glibc
def test_freed_memory_stays_resident_only_once_kept():
    kept, released = released_mib("keep")
    assert kept == "True" and released < 1  # the 24 MiB stayed in the process
    kept, released = released_mib("default")
    assert kept == "False" and released > 20  # by default glibc hands it back at once


@pytest.mark.parametrize(("argv", "called"), [(["presets"], True), (["serve", "/nonexistent-run"], False)])
def test_the_command_line_keeps_freed_memory_except_when_serving(monkeypatch, argv, called):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    main(argv)
    assert bool(calls) == called
