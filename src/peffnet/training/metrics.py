"""Run-directory logs: ``metrics.jsonl``, ``metrics.csv`` and TensorBoard under ``tb/`` (rank 0 only).

One record per optimizer step (``kind: "step"``) and one per epoch (``kind: "epoch"``). On resume the
records past the checkpoint's step -- written by the interrupted process after its last checkpoint -- are
dropped from the JSONL/CSV files and purged from TensorBoard, so the logs read as one uninterrupted run.
Every record goes to the three files whole or not at all (:mod:`peffnet.files`): a disk that refuses one
stops the run with a :class:`~peffnet.errors.WriteFailure`, the files as they were before the record.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from peffnet.files import append_file, write_file

CSV_COLUMNS = ("kind", "epoch", "step", "loss", "lr", "img_per_s", "top1", "top5", "time_s")
_EVENT_FILES = itertools.count()
"""Numbers the event files of this process (:func:`event_file_name`)."""


def event_file_name(when: float, number: int) -> str:
    """TensorBoard's event file name for a file made at ``when`` (seconds since the epoch) as this process's
    ``number``-th. The number is zero-padded: TensorBoard reads a directory's files in name order, so the files of
    one second must sort in the order they were made (a resumed run's purge comes after the run's own events)."""
    return f"events.out.tfevents.{int(when):010d}.{socket.gethostname()}.{os.getpid()}.{number:06d}"


class EventFile:
    """A TensorBoard event file (``DIR/events.out.tfevents.*``) written in the caller's thread.

    TensorBoard's own writer (``SummaryWriter``) writes from a thread of its own: when the disk is full that
    thread dies printing a traceback, and the error comes back at some later call of the writer (or, with
    nothing logged after it, never). Here each logged record is appended whole when it is logged, and a
    failure is a :class:`~peffnet.errors.WriteFailure` like that of any other file.
    """

    def __init__(self, directory: Path, purge_after: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / event_file_name(time.time(), next(_EVENT_FILES))
        events = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_after is not None:  # TensorBoard then hides the events of steps after ``purge_after``
            events.append(Event(wall_time=time.time(), step=purge_after + 1,
                                session_log=SessionLog(status=SessionLog.START)))
        self._append(events)

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """One event at ``step`` holding each ``tag: value`` of ``scalars``."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        if values:
            self._append([Event(wall_time=time.time(), step=step, summary=Summary(value=values))])

    def _append(self, events: list) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        records = io.BytesIO()
        for event in events:
            RecordWriter(records).write(event.SerializeToString())  # the framing TensorBoard reads
        append_file(self.path, records.getvalue())


class MetricsLogger:
    """Append-only metric files of a run; a no-op on ranks other than 0."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.jsonl, self.csv = out_dir / "metrics.jsonl", out_dir / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        if resume_step is None:
            self.jsonl.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self._rewrite_csv()
        self.tb = EventFile(out_dir / "tb", purge_after=resume_step)

    def _truncate(self, step: int) -> None:
        """Keep only the records at or before ``step`` (the checkpoint we resume from)."""
        if not self.jsonl.exists():
            return
        kept = []
        for line in self.jsonl.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        write_file(self.jsonl, "".join(f"{line}\n" for line in kept))

    def _rewrite_csv(self) -> None:
        """The CSV mirrors the JSONL file (rebuilt at start so both agree after a resume)."""
        records = [json.loads(line) for line in self.jsonl.read_text().splitlines()] if self.jsonl.exists() else []
        write_file(self.csv, _csv_rows(records, header=True))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (``kind``, ``step`` and any of :data:`CSV_COLUMNS`) to all three sinks."""
        if not self.enabled:
            return
        append_file(self.jsonl, json.dumps(record) + "\n")
        append_file(self.csv, _csv_rows([record]))
        if self.tb is not None:
            self.tb.add_scalars(record["step"], {f"{record['kind']}/{key}": value for key, value in record.items()
                                                 if key not in ("kind", "step", "epoch")
                                                 and isinstance(value, (int, float))})


def _csv_rows(records: list[dict[str, Any]], header: bool = False) -> str:
    """``records`` as CSV lines of :data:`CSV_COLUMNS` (with the header line first)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, CSV_COLUMNS, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(records)
    return text.getvalue()
