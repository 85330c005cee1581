"""involution.runner.outcome: every way a job can end maps to one outcome (job.json status,
exit status, whether a sweep goes on); end to end in test_train, test_resume and test_summary."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from involution.runner.guards import Preempted
from involution.runner.outcome import outcome_of
from involution.runner.preflight import SetupError
from involution.runs.records import NonFiniteMetrics
from involution.tasks import Diverged


@pytest.mark.parametrize(
    ("error", "status", "exit_code", "goes_on"),
    [
        (SetupError("operator.kernel_size must be an odd positive int, got 4"), "failed", 2, True),
        (Diverged("train loss is nan at step 8", 8), "diverged", 3, True),
        (NonFiniteMetrics("non-finite metrics: val/loss=nan"), "diverged", 3, True),
        (Preempted(signal.SIGUSR1, 3, "last.ckpt"), "preempted", 128 + signal.SIGUSR1, False),
        (SIGTERMException(), "preempted", 128 + signal.SIGTERM, False),
        (RuntimeError("injected fault"), "failed", 1, True),
        (KeyboardInterrupt(), "failed", 1, False),
    ],
)
def test_every_ending_has_one_outcome(
    tmp_path: Path, error: BaseException, status: str, exit_code: int, goes_on: bool
) -> None:
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    outcome = outcome_of(error, cfg)
    assert (outcome.status, outcome.exit_code, outcome.sweep_goes_on) == (
        status,
        exit_code,
        goes_on,
    )
    assert outcome.message and "\n" not in outcome.message
    if status == "diverged":  # what job.json records: the line and the last good checkpoint
        last = tmp_path / "checkpoints" / "last.ckpt"
        assert outcome.message.endswith(f"last good checkpoint {last} (kept)")
        assert isinstance(outcome.recorded, Diverged) and outcome.checkpoint == str(last)
    if status == "preempted":
        assert outcome.message.startswith("preempted: SIG") and outcome.checkpoint
