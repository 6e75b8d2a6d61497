"""Progress of long work: bars on a terminal, periodic plain lines otherwise, silence in the library by default."""

from __future__ import annotations

import io

import pytest
import torch

from vaekit import progress
from vaekit.batches import batched
from vaekit.cli import main


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_off_a_terminal_a_line_comes_every_interval_with_the_count_and_the_time_left():
    out, clock = io.StringIO(), Clock()
    bar = progress.Progress("evaluate", 100, stream=out, interval=10, clock=clock)
    for _ in range(4):
        clock.t += 4
        bar.update(10)
    lines = out.getvalue().splitlines()  # at 12 s (30 done) and none at 16 s: 4 s after the last line
    assert lines == ["evaluate: 30/100 inputs (30%), 12 s, about 28 s left"]
    clock.t += 100
    bar.update(60)  # done: no line, the command's own output follows
    assert len(out.getvalue().splitlines()) == 1


def test_loops_report_only_inside_a_report_block_and_only_the_outermost():
    out = io.StringIO()
    x = torch.arange(10.0)
    assert batched(lambda xb, yb: xb, x, batch_size=3).tolist() == x.tolist()
    with progress.report("scores", stream=out, interval=0):
        inner = batched(lambda xb, yb: batched(lambda a, b: a * 2, xb, batch_size=1), x, batch_size=4)
    torch.testing.assert_close(inner, 2 * x)
    assert out.getvalue().splitlines() == ["scores: 4/10 inputs (40%), 0 s, about 0 s left",
                                           "scores: 8/10 inputs (80%), 0 s, about 0 s left"]


@pytest.fixture
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--quiet", "--out", str(path)]) == 0
    return path


def test_commands_write_progress_lines_when_not_on_a_terminal(run, capsys, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    assert main(["evaluate", str(run), "--iw-samples", "3"]) == 0
    err = capsys.readouterr().err
    assert "evaluate: " in err and " inputs (" in err and "s left" in err
    cfg_out = run.parent / "again"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(cfg_out),
                 "--batch-size", "64"]) == 0
    assert "epoch 1/1: 1/" in capsys.readouterr().err


def test_a_tsne_map_is_drawn_from_a_seeded_subset(run, tmp_path, capsys):
    argv = ["embed", str(run), "-o", str(tmp_path / "z.npz"), "--plot", str(tmp_path / "map.png"),
            "--projection", "tsne", "--plot-points", "60"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(60 of " in out and "(seeded) inputs)" in out and (tmp_path / "map.png").stat().st_size > 0
    assert main([*argv[:-1], "0"]) == 2
    assert "--plot-points must be >= 1, got 0" in capsys.readouterr().err
