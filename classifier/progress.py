"""Progress bars for long work (encoding, training, scoring, benchmarks) that show in a log file too.

On a terminal this is rich's live bar. When the output is not a terminal (redirected to a file, CI, a pipe)
rich draws nothing until the work is done, so an hour of scoring looks hung; there the bar prints instead one
plain line per task on stderr when it starts, at most every `every` seconds while it runs, and when it ends:

    [10:42:07] scoring 64 items (+64 audit) per model: 310/1152 (27%), 12:31 elapsed, about 33:58 left

Lines go to stderr so they never mix with a command's machine-readable stdout (`--json`).
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from rich.progress import Progress, Task, TaskID

#: seconds between two plain lines of one task
EVERY = 30.0


class LoggedProgress(Progress):
    """rich.progress.Progress that, off a terminal, reports as timestamped lines on stderr (see module doc)."""

    def __init__(self, *columns, every: float = EVERY, stream=None, **kwargs):
        super().__init__(*columns, **kwargs)
        self.plain = not self.console.is_terminal
        if self.plain:
            self.disable = True  # no live display to draw; the lines below replace it
        self.every, self.stream = every, stream
        self._last: dict[TaskID, float] = {}
        self._done: set[TaskID] = set()

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        if self.plain:
            self._line(task_id)
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe(task_id)

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe(task_id)

    def stop(self) -> None:
        if self.plain:
            for task_id in list(self._tasks):
                if task_id not in self._done:
                    self._line(task_id)
        super().stop()

    def _maybe(self, task_id: TaskID) -> None:
        if not self.plain or task_id in self._done:
            return
        task = self._tasks[task_id]
        if task.finished or time.monotonic() - self._last.get(task_id, 0.0) >= self.every:
            self._line(task_id)

    def _line(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        self._last[task_id] = time.monotonic()
        if task.finished:
            self._done.add(task_id)
        stream = self.stream or sys.stderr
        stream.write(f"[{time.strftime('%H:%M:%S')}] {describe(task)}\n")
        stream.flush()


def describe(task: Task) -> str:
    """One line: what, how far, how long so far and how long still (when rich can estimate it)."""
    what = task.description or "working"
    if not task.completed and not task.finished:
        return f"{what}: started" + (f" ({task.total:g} to do)" if task.total else "")
    parts = [f"{what}: "]
    if task.total:
        parts.append(f"{task.completed:g}/{task.total:g} ({task.percentage:.0f}%)")
    else:
        parts.append("done" if task.finished else f"{task.completed:g}")
    extra = [f"{k} {v:.3f}" for k, v in task.fields.items() if isinstance(v, float) and v == v]
    if extra:
        parts.append(", " + ", ".join(extra))
    if task.elapsed:
        parts.append(f", {clock(task.elapsed)} elapsed")
    if task.finished:
        parts.append(", done")
    elif task.time_remaining is not None:
        parts.append(f", about {clock(task.time_remaining)} left")
    return "".join(parts)


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds))).removeprefix("0:")
