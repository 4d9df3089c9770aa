"""A Hydra callback that records what each job of a multirun returned (what a sweeper would optimize)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class RecordReturn(Callback):
    """Appends ``{"value": <job return value>, "output_dir": <job dir>}`` per job to ``path`` (JSON lines)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        with self.path.open("a") as f:
            record = {"value": job_return.return_value, "output_dir": config.hydra.runtime.output_dir}
            f.write(json.dumps(record) + "\n")
