"""Long work shows its progress in a log file too, not only on a terminal."""

from __future__ import annotations

import io
import re

from conftest import EXAMPLES, run_cli
from rich.console import Console

from classifier.progress import LoggedProgress


def run(console: Console, stream: io.StringIO) -> None:
    with LoggedProgress(console=console, stream=stream, every=0) as bar:
        task = bar.add_task("scoring 4 items", total=4)
        for _ in range(4):
            bar.advance(task)
        train = bar.add_task("train legal", total=2, loss=float("nan"))
        bar.update(train, advance=1, loss=0.5)


def test_off_a_terminal_each_task_prints_timestamped_lines_to_the_end():
    out, lines = io.StringIO(), io.StringIO()
    run(Console(file=out), lines)
    got = lines.getvalue().splitlines()
    assert all(re.match(r"\[\d\d:\d\d:\d\d\] ", g) for g in got), got
    text = "\n".join(g[11:] for g in got)
    assert "scoring 4 items: started (4 to do)" in text
    assert "scoring 4 items: 2/4 (50%)" in text
    assert re.search(r"scoring 4 items: 4/4 \(100%\), .*done", text)
    assert sum("scoring 4 items: 4/4" in g for g in got) == 1  # the end once, not again when the bar stops
    assert "train legal: 1/2 (50%), loss 0.500" in text  # unfinished at stop: its last state is printed
    assert out.getvalue().strip() == ""  # no bar drawn into a file


def test_on_a_terminal_it_is_the_live_bar_and_no_lines():
    out, lines = io.StringIO(), io.StringIO()
    run(Console(file=out, force_terminal=True, width=100), lines)
    assert lines.getvalue() == ""
    assert "scoring 4 items" in out.getvalue()


def test_route_train_into_a_log_shows_encoding_progress_on_stderr(tmp_path):
    r = run_cli("route", "train", "--data", EXAMPLES, "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert re.search(r"encoding \d+ texts: started \(\d+ to do\)", r.stderr), r.stderr
    assert re.search(r"encoding (\d+) texts: \1/\1 \(100%\)", r.stderr), r.stderr
    assert "encoding" not in r.stdout and "macro" in r.stdout.lower()  # stdout keeps the command's own output
