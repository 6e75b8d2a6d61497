"""Image folders decoded once: the cache is used while the folder is unchanged and only then, and decoding in
worker processes gives what decoding here gives."""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from vaekit import DataError, progress
from vaekit.data import folders, images

RNG = np.random.default_rng(0)


def write_folder(folder, n: int = 12, bad: tuple[int, ...] = (), deep: tuple[int, ...] = ()) -> None:
    """``n`` RGB PNGs in two class folders; ``bad`` indices are corrupt files, ``deep`` ones 16-bit grey."""
    for i in range(n):
        where = folder / ("a" if i < n // 2 else "b")
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{i:03d}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG not really")
        elif i in deep:
            Image.fromarray(RNG.integers(0, 65536, (7, 6), dtype=np.uint16)).save(path)
        else:
            Image.fromarray(RNG.integers(0, 256, (7, 6, 3), dtype=np.uint8)).save(path)


def test_the_second_read_comes_from_the_cache_and_warns_alike(tmp_path, monkeypatch, caplog):
    write_folder(tmp_path / "pics", bad=(3,))
    with caplog.at_level(logging.INFO, logger="vaekit.data.folders"):
        first = images.read(tmp_path / "pics")
    assert "decoded 11 images" in caplog.text and "skipped 1 unreadable image file" in caplog.text
    caplog.clear()
    monkeypatch.setattr(folders, "decode", lambda *a: pytest.fail("decoded although cached"))
    with caplog.at_level(logging.INFO, logger="vaekit.data.folders"):
        again = images.read(tmp_path / "pics")
    assert "from the cache" in caplog.text and "skipped 1 unreadable image file" in caplog.text
    assert again.x.dtype == np.uint8 and np.array_equal(again.x, first.x)
    assert np.array_equal(again.y, first.y) and again.classes == first.classes == ("a", "b")


@pytest.mark.parametrize("change", ["rewrite", "add", "remove", "size"])
def test_a_changed_folder_or_other_settings_decode_again(tmp_path, change):
    pics = tmp_path / "pics"
    write_folder(pics)
    before = images.read(pics)
    if change == "rewrite":  # other pixels, and a later modification time
        path = pics / "a" / "000.png"
        Image.fromarray(np.zeros((7, 6, 3), np.uint8)).save(path)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "add":
        Image.fromarray(np.zeros((7, 6, 3), np.uint8)).save(pics / "b" / "999.png")
    elif change == "remove":
        (pics / "b" / "011.png").unlink()
    after = images.read(pics, image_size=(3, 3)) if change == "size" else images.read(pics)
    fresh = folders.decode(folders.list_folder(pics)[0], (3, 3) if change == "size" else None, None, False).x
    assert np.array_equal(after.x, fresh) and not np.array_equal(after.x, before.x)


def test_a_damaged_cache_entry_is_decoded_again(tmp_path, caplog):
    write_folder(tmp_path / "pics")
    first = images.read(tmp_path / "pics")
    (entry,) = [p for p in folders.cache_dir().iterdir() if not p.name.startswith(".")]
    (entry / "x.npy").write_bytes((entry / "x.npy").read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="vaekit.data.folders"):
        again = images.read(tmp_path / "pics")
    assert "ignoring the damaged cache entry" in caplog.text and np.array_equal(again.x, first.x)


def test_an_unwritable_cache_costs_a_warning_only(tmp_path, monkeypatch, caplog):
    write_folder(tmp_path / "pics")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("VAEKIT_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger="vaekit.data.folders"):
        got = images.read(tmp_path / "pics")
    assert got.x.shape == (12, 3, 7, 6) and "cannot cache the decoded folder" in caplog.text


def test_worker_processes_decode_what_this_process_decodes(tmp_path, monkeypatch):
    write_folder(tmp_path / "pics", n=14, bad=(2, 9), deep=(5,))  # a 16-bit image: all become float32 values
    files = folders.list_folder(tmp_path / "pics")[0]
    here = folders.decode(files, None, None, False)
    monkeypatch.setattr(folders, "PARALLEL_AFTER_S", 0.0)  # whatever the pace, the rest goes to workers
    monkeypatch.setattr(folders, "PROBE", 2)
    monkeypatch.setattr(folders, "CHUNK", 3)
    pools = []

    class Recorded(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Recorded)
    stream = io.StringIO()
    with progress.report("train", stream=stream, interval=0):
        there = folders.decode(files, None, None, False)
    assert len(pools) == 1 and there.x.dtype == np.float32 and np.array_equal(there.x, here.x)
    assert there.kept.tolist() == here.kept.tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]
    assert [i for i, _ in there.skipped] == [2, 9] and "decoding 14 images" in stream.getvalue()
    with pytest.raises(DataError, match=r"cannot read image .*002\.png"):  # the first bad file, in file order
        folders.decode(files, None, None, True)


def test_decoding_holds_the_folders_pixels_once_plus_a_chunk(tmp_path, monkeypatch):
    import tracemalloc

    pics = tmp_path / "pics"
    for i in range(600):
        (pics / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(pics / "a" / f"{i:03d}.png")
    files = folders.list_folder(pics)[0]
    monkeypatch.setattr(folders, "PARALLEL_AFTER_S", float("inf"))  # all in this process, where it is traced
    tracemalloc.start()
    try:
        got = folders.decode(files, None, None, False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    chunk = 2 * folders.CHUNK * got.x[0].nbytes  # a chunk's images and their stack
    assert got.x.shape == (600, 3, 16, 16) and got.x.nbytes == 600 * 768
    assert peak < got.x.nbytes + chunk + 200_000, (peak, got.x.nbytes)  # not the whole twice (before: 974,667 B)
