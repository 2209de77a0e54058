"""Training progress across the ``kfp.local`` process boundary, and a quiet console.

A training component reports each epoch as one line on its stdout::

    medops-progress {"run": "classifier", "epoch": 3, "epochs": 15, "metrics": {...}}

``kfp.local`` relays every component's output, and its own executor dumps, through the parent's
``sys.stdout``. :func:`quiet_console` stands in for it while the pipeline runs: everything goes
to a log file, and the progress lines become one progress bar per training run. On a cluster the
same lines are ordinary log lines.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

PREFIX = "medops-progress "
TAIL_LINES = 25
"""Lines of the running step kept for the error message when it fails."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOT_SHOWN = {"epoch", "lr", "seconds", "cpu_seconds", "trainable_params", "val_metric"}


def plain(text: str) -> str:
    """``text`` without terminal colour codes (kfp colours task names and statuses)."""
    return _ANSI.sub("", text)


def epoch_reporter(
    run: str, epochs: int | None = None, *, stream: TextIO | None = None
) -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch`` callback for ``medops.training.train_model`` that prints one progress
    line per epoch (``epochs``: the planned total, for the bar's length); each candidate network
    of a run gets a bar of its own."""

    def report(epoch: int, record: dict[str, float]) -> None:
        name = run
        if "candidate" in record:
            name += f" (candidate {record['candidate']:.0f} of {record['candidates']:.0f})"
        event = {
            "run": name,
            "epoch": int(epoch),
            "epochs": epochs,
            "metrics": {k: float(v) for k, v in record.items() if isinstance(v, int | float)},
        }
        out = stream or sys.stdout
        out.write(PREFIX + json.dumps(event) + "\n")
        out.flush()

    return report


def parse_progress(line: str) -> dict[str, Any] | None:
    """The event of a progress line (wherever it sits in the line), checked; else None."""
    at = line.find(PREFIX)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(PREFIX) :])
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("epoch"), int | float):
        return None
    metrics = event.get("metrics")
    numbers = metrics.items() if isinstance(metrics, dict) else ()
    total = event.get("epochs")
    return {
        "run": str(event.get("run", "model")),
        "epoch": int(event["epoch"]),
        "epochs": int(total) if isinstance(total, int | float) and total > 0 else None,
        "metrics": {k: float(v) for k, v in numbers if isinstance(v, int | float)},
    }


def describe_metrics(metrics: Mapping[str, float]) -> str:
    """``loss 0.412  val_auc 0.871``: the training loss and the validation figures."""
    shown = []
    if "train_loss" in metrics:
        shown.append(("loss", metrics["train_loss"]))
    shown += [
        (k, v)
        for k, v in metrics.items()
        if k.startswith("val_") and k not in _NOT_SHOWN and k != "val_loss"
    ]
    return "  ".join(f"{k} {v:.3f}" for k, v in shown if math.isfinite(v))


class ProgressBars:
    """One bar per training run on a terminal; one line per epoch anywhere else (logs, CI)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self._bar: Any = None
        self._run: str | None = None
        self._epoch = 0

    def update(self, event: Mapping[str, Any]) -> None:
        run, epoch, total = str(event["run"]), int(event["epoch"]), event.get("epochs")
        metrics = describe_metrics(event.get("metrics") or {})
        if run != self._run or epoch <= self._epoch:
            self.close()
            self._run = run
        self._epoch = epoch
        if not self.tty:
            of = f"/{total}" if total else ""
            # not print(): kfp.local replaces it while a step runs (to indent the step's output)
            self.out.write(f"  train {run}  epoch {epoch}{of}  {metrics}".rstrip() + "\n")
            self.out.flush()
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=f"  train {run}", unit="epoch", file=self.out, leave=True
            )
        self._bar.update(epoch - self._bar.n)
        self._bar.set_postfix_str(metrics)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._run, self._epoch = None, None, 0


class ConsoleRelay(io.TextIOBase):
    """Stands in for ``sys.stdout``: every line to ``log``, progress lines to ``bars``, and
    the last lines of the running kfp task kept for an error message."""

    def __init__(self, log: TextIO, bars: ProgressBars) -> None:
        self.log = log
        self.bars = bars
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = ""
        self._lock = threading.RLock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.log.write(text)
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._line(plain(line).strip())
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _line(self, line: str) -> None:
        event = parse_progress(line)
        if event is not None:
            self.bars.update(event)
            return
        if "Executing task " in line:
            self.tail.clear()
        if line:
            self.tail.append(line)


@contextlib.contextmanager
def quiet_console(log_path: Path, console: TextIO | None = None) -> Iterator[ConsoleRelay]:
    """Send what is printed inside to ``log_path`` (appended) and show only progress bars on
    ``console`` (the current ``sys.stdout`` by default)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bars = ProgressBars(console or sys.stdout)
    with log_path.open("a", encoding="utf-8") as log:
        relay = ConsoleRelay(log, bars)
        try:
            with contextlib.redirect_stdout(relay):
                yield relay
        finally:
            relay.flush()
            bars.close()
