"""A sweep's submission ledger, ``<root>/submissions.jsonl``: one line per job submitted.

Each line records the stage, the scheduler's job id and the job's log files, so ``sweep
status`` can ask the scheduler about every job and point at the log of each failed one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["record", "records"]


def record(root: Path, stage: str, job, **extra) -> None:
    """Append one submitted ``job`` (submitit's or the local pool's) of ``stage``."""
    with open(Path(root) / "submissions.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "stage": stage, "job_id": str(job.job_id),
                            "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), **extra}) + "\n")


def records(root: Path) -> list[dict]:
    """Every recorded submission, oldest first (empty if nothing was submitted)."""
    sub = Path(root) / "submissions.jsonl"
    if not sub.exists():
        return []
    return [json.loads(line) for line in sub.read_text().splitlines() if line.strip()]
