"""hydra/launcher=submitit_local runs sweeps through submitit (as on SLURM, minus the cluster);
hydra/launcher=slurm turns its keys into the right sbatch options."""

from __future__ import annotations

import os
from pathlib import Path

import submitit
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from involution.runs.summary import load_summary

from conftest import run_tiny_sweep


def test_submitit_local_sweep_records_each_job(tmp_path: Path) -> None:
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    args = ["-m", *launcher, "hydra/callbacks=sweep_summary", "operator.kernel_size=3,4"]
    result, sweep_dir = run_tiny_sweep(tmp_path, args)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "1 ok, 1 failed" in result.stdout
    frame = load_summary(sweep_dir)
    assert (
        list(frame["status"]) == ["ok", "failed"]
        and "operator.kernel_size" in frame.loc[1, "error"]
    )
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))  # submitit's own per-job logs


def test_slurm_launcher_keys_become_sbatch_options(
    compose_train, tmp_path: Path, monkeypatch
) -> None:
    """The sbatch script submitit would submit (no cluster here: a stand-in ``srun`` on PATH)."""
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_train(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.nodes=2",
            "hydra.launcher.timeout_min=90",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
        ]
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    # The parameter mapping of hydra_submitit_launcher's BaseSubmititLauncher.launch:
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {
        k if k in base else f"slurm_{k}": v
        for k, v in launcher.items()
        if k not in ("_target_", "submitit_folder", "max_num_timeout")
    }
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**params)
    text = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    # --signal: SIGUSR1 before the time limit, for Lightning's SLURM auto-requeue (not
    # submitit's USR2)
    for option in (
        "--partition=gpu",
        "--gpus-per-node=4",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--time=90",
        "--signal=USR1@120",
    ):
        assert f"#SBATCH {option}" in text, option
