"""The run's logs: ``metrics.jsonl``, ``metrics.csv`` and TensorBoard events agree, and read as one
uninterrupted run after a resume (docs/formats.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peffnet.training.metrics import MetricsLogger, event_file_name


def test_event_files_of_one_second_sort_in_the_order_they_were_made() -> None:
    """TensorBoard reads a directory's event files in name order: the 10th file of a process made in the same
    second as its 9th (a run and its resume in one process) must sort after it, and so on."""
    now = 1_800_000_000.5
    for first in (8, 9, 99, 999, 99_999):
        names = [event_file_name(now, first), event_file_name(now, first + 1), event_file_name(now + 1, 0)]
        assert sorted(names) == names, names


def test_a_resume_drops_the_records_after_its_checkpoint_from_every_log(tmp_path: Path) -> None:
    """An interrupted process logged steps 1-6 and checkpointed at step 4; the resumed one logs 5 and 6
    again. TensorBoard (its own reader) shows steps 1-6 once, with the resumed values after step 4."""
    first = MetricsLogger(tmp_path, enabled=True)
    for step in range(1, 7):
        first.log({"kind": "step", "epoch": 1, "step": step, "loss": float(step), "lr": 0.1})
    resumed = MetricsLogger(tmp_path, enabled=True, resume_step=4)
    for step in (5, 6):
        resumed.log({"kind": "step", "epoch": 1, "step": step, "loss": 10.0 + step, "lr": 0.1})
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 15.0), (6, 16.0)]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("step/loss")] == expected
    assert [e.step for e in events.Scalars("step/lr")] == [step for step, _ in expected]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == expected
    with (tmp_path / "metrics.csv").open(newline="") as f:
        assert [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)] == expected
