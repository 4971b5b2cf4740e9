"""Where a `jobs.train --stream` run's training stream stands, kept across restarts.

The stream renders sequences at indices after the data set's own. Which indices a batch gets is
decided when Ray Data renders it, not when the data set is built: each render call claims the
next indices from one `StreamCursor` actor, which writes the next unclaimed index to the run's
storage before answering. So a stream that starts again (Ray Train restarting its workers after
a failure, which runs the data set again from its first row, or the job rerun with the same
`--name` to resume) goes on where the last one stopped and never hands out an index twice.
What was claimed but not yet trained on when the run stopped (Ray Data's read-ahead) is
skipped, not repeated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import ray

CURSOR_FILE = "stream_cursor.json"  # in the run's Ray Train storage folder


def saved_next(run_dir: Path) -> int | None:
    """The next unclaimed index a previous attempt of this run left, or None."""
    try:
        return int(json.loads((run_dir / CURSOR_FILE).read_text())["next"])
    except FileNotFoundError:
        return None


@ray.remote(num_cpus=0)
class StreamCursor:
    """Hands out consecutive index ranges, each once; the next unclaimed index is on disk
    before a range is handed out."""

    def __init__(self, run_dir: str, first: int) -> None:
        self.path = Path(run_dir) / CURSOR_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.next = max(first, saved_next(self.path.parent) or first)

    def claim(self, count: int) -> tuple[int, int]:
        start, self.next = self.next, self.next + count
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next": self.next}))
        os.replace(tmp, self.path)  # a crash leaves the old or the new value, never half of one
        return start, self.next


class ClaimFrom:
    """`StreamRenderer`'s claim: `count` fresh indices from the cursor (picklable: a handle)."""

    def __init__(self, cursor: ray.actor.ActorHandle) -> None:
        self.cursor = cursor

    def __call__(self, count: int) -> np.ndarray:
        start, stop = ray.get(self.cursor.claim.remote(count))
        return np.arange(start, stop, dtype=np.int64)
