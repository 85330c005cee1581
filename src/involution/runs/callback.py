"""The Hydra callback that ends every multirun with its summary table (``conf/hydra/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from involution.runs.summary import has_failures, report, summarize


class SummaryCallback(Callback):
    """When a multirun ends, write and print its summary and ``N ok, M failed``; exit with status 1
    when a job failed, diverged or was preempted (``exit_on_failure``)."""

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        frame = summarize(root, finished=True)
        print(f"\n{report(frame, root)}", flush=True)
        if self.exit_on_failure and has_failures(frame):
            raise SystemExit(1)
