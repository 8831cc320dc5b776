"""Run-directory logs: ``metrics.jsonl``, ``metrics.csv`` and TensorBoard under ``tb/`` (rank 0 only).

One record per optimizer step (``kind: "step"``) and one per epoch (``kind: "epoch"``). On resume the
records past the checkpoint's step -- written by the interrupted process after its last checkpoint -- are
dropped from the JSONL/CSV files and purged from TensorBoard, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("kind", "epoch", "step", "loss", "lr", "img_per_s", "top1", "top5", "time_s")


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
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step)

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
        self.jsonl.write_text("".join(f"{line}\n" for line in kept))

    def _rewrite_csv(self) -> None:
        """The CSV mirrors the JSONL file (rebuilt at start so both agree after a resume)."""
        records = [json.loads(line) for line in self.jsonl.read_text().splitlines()] if self.jsonl.exists() else []
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (``kind``, ``step`` and any of :data:`CSV_COLUMNS`) to all three sinks."""
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore").writerow(record)
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
