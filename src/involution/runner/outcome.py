"""How a job ended, as one :class:`Outcome`: its job.json status, the line shown, the exit status
of a single run, what W&B is told and whether a sweep goes on. The one table of endings, for every
entry point and task (the lifecycle, ``involution.runner.lifecycle``, acts on it):

=====================================  ==================  ============  ============  =========
ending                                 job.json            exit status   W&B run       a sweep
=====================================  ==================  ============  ============  =========
ok                                     ok + metrics        0             finished      goes on
bad input (SetupError, ResumeError)    failed + the line   2             finished (1)  goes on
diverged (NaN/Inf loss or metrics)     diverged + the      3             finished (1)  goes on
                                       last checkpoint
preempted (SIGTERM, SIGUSR1)           preempted + the     128 + signal  preempting    stops
                                       checkpoint
any other exception                    failed + the line   traceback     finished (1)  goes on
interrupted (Ctrl-C)                   failed              re-raised     finished (1)  stops
=====================================  ==================  ============  ============  =========

(exit statuses are a single run's: in a multirun a job that "goes on" returns None to Hydra.)
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from involution.runner.guards import Preempted
from involution.runner.preflight import SetupError
from involution.runner.resume import ResumeError, latest_checkpoint
from involution.runs.records import NonFiniteMetrics, one_line
from involution.tasks import Diverged


@dataclass
class Outcome:
    """How a job ended: its job.json ``status``, the one-line ``message`` shown, the process's
    ``exit_code`` (single runs), the ``checkpoint`` to continue from, whether a sweep goes on, and
    the ``value`` of ``optimized_metric`` an ok run returns (its best, when checkpoints kept one).
    """

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    message: str = ""
    exit_code: int = 0
    checkpoint: str | None = None
    recorded: BaseException | None = None  # what job.json's error line is made from
    sweep_goes_on: bool = True


def outcome_of(error: BaseException, cfg: DictConfig) -> Outcome:
    """The outcome of a job that raised ``error`` (see the module's table)."""
    if isinstance(error, SetupError | ResumeError):
        return Outcome("failed", message=str(error), exit_code=2, recorded=error)
    if isinstance(error, Preempted | SIGTERMException):
        signum = getattr(error, "signum", signal.SIGTERM)
        checkpoint = getattr(error, "checkpoint", None) or latest_checkpoint(cfg.paths.output_dir)
        message = (
            f"preempted: {signal.Signals(signum).name}; checkpoint {checkpoint}; "
            "run the same command again (resume=auto) to continue"
        )
        checkpoint = str(checkpoint) if checkpoint else None
        return Outcome("preempted", message=message, exit_code=128 + int(signum),
                       checkpoint=checkpoint, recorded=error, sweep_goes_on=False)  # fmt: skip
    if isinstance(error, Diverged | NonFiniteMetrics):
        found = latest_checkpoint(cfg.paths.output_dir)
        kept = f"last good checkpoint {found} (kept)" if found else "no checkpoint was written"
        message = f"training diverged: {str(error).splitlines()[0]}; {kept}"
        recorded = Diverged(message, getattr(error, "step", -1))
        return Outcome("diverged", message=message, exit_code=3,
                       checkpoint=str(found) if found else None, recorded=recorded)  # fmt: skip
    # an unexpected error (its traceback is the report), or an interruption: the sweep stops
    return Outcome("failed", message=one_line(error), exit_code=1, recorded=error,
                   sweep_goes_on=isinstance(error, Exception))  # fmt: skip
