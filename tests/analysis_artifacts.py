"""Small real artifacts for the analysis tests and the notebooks, made once per test session
(also across pytest-xdist workers: ``conftest.once_per_session``).

- a 2-job Hydra multirun of ``python -m involution.train`` on digits (involution, kernel 3 and 5);
- a short convolution run on digits (its checkpoint).

Job 0 of the multirun is the involution checkpoint. Narrow networks (base width 4) and a few
batches keep both under a minute on two CPU cores; the two processes run side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import CSV_ONLY, NARROW_WIDTHS, QUIET, once_per_session, quick_schedule

# narrow networks (base width 4: the multirun sets group_channels=4), two epochs of a few batches
TINY = [*CSV_ONLY, *NARROW_WIDTHS, *QUIET, *quick_schedule(epochs=2)]


@dataclass(frozen=True)
class Artifacts:
    root: Path
    multirun: Path
    involution_checkpoint: Path
    convolution_checkpoint: Path


def _best(run_dir: Path) -> Path:
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert found, f"no best checkpoint in {run_dir}"
    return found[-1]


def make_artifacts(tmp_path_factory) -> Artifacts:
    """Train the sweep and the convolution run (once per session), side by side."""
    shared = once_per_session(tmp_path_factory, "analysis", _train)
    return Artifacts(**{key: Path(value) for key, value in shared.items()})


def _train(root: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    multirun, conv = root / "multirun", root / "conv"
    commands = [
        [
            "--multirun",
            f"hydra.sweep.dir={multirun}",
            "operator.kernel_size=3,5",
            "operator.group_channels=4",
            *TINY,
        ],
        [f"hydra.run.dir={conv}", "operator=convolution", *TINY],
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "involution.train", *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in commands
    ]
    for process, args in zip(processes, commands):
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"training {args} failed:\n{output[-4000:]}"
    found = Artifacts(root, multirun, _best(multirun / "0"), _best(conv))
    return {key: str(value) for key, value in vars(found).items()}
