"""A job that beats: writes its pid, then a counter to a file every 0.1 s (for tests/test_workers.py)."""

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heartbeat:
    folder: str
    index: int
    seconds: float = 120.0  # bounded: even a worker nobody kills stops beating

    def __call__(self):
        folder = Path(self.folder)
        tmp = folder / f"pid-{self.index}.tmp"
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, folder / f"pid-{self.index}")
        end, n = time.monotonic() + self.seconds, 0
        while time.monotonic() < end:
            n += 1
            (folder / f"beat-{self.index}").write_text(str(n))
            time.sleep(0.1)
