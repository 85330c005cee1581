"""trainer=ddp: the config turns on SyncBatchNorm; Lightning DDP runs 2 CPU processes (gloo) on
digits."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy

from involution.runs.records import read_record

from conftest import run_tiny_sweep

# torch's DDP refuses SyncBatchNorm on CPU modules ("SyncBatchNorm layers only work with GPU
# modules"), so the CPU smokes switch it off; test_ddp_config_syncs_batchnorm checks the GPU path.
CPU_DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.sync_batchnorm=false",
]


def started_two_processes(output: str) -> bool:
    return "Starting with 2 processes" in output and "distributed_backend=gloo" in output


def test_ddp_config_syncs_batchnorm(compose_train) -> None:
    cfg = compose_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    synced = trainer.strategy._layer_sync.apply(
        model
    )  # what DDPStrategy.connect does to the module
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)


def test_ddp_two_cpu_processes_in_a_multirun_job(tmp_path: Path) -> None:
    """DDP on 2 CPU processes (gloo) as a sweep job: Lightning starts rank 1 by re-running the
    command, which must be this job as a single run in the job's directory, not the sweep again.
    (A plain `trainer=ddp` run takes Lightning's own path; this one adds the sweep's.)"""
    result, sweep_dir = run_tiny_sweep(tmp_path, ["-m", "hydra/callbacks=sweep_summary", *CPU_DDP])
    job = sweep_dir / "0"
    output = result.stdout + result.stderr + (job / "train.log").read_text()
    assert result.returncode == 0, output[-4000:]
    assert "1 ok, 0 failed" in result.stdout and started_two_processes(output)
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0"]
    assert (
        job / "train_ddp_process_1.log"
    ).is_file()  # rank 1 ran as a single run in the job's directory
    assert not (job / "multirun.yaml").exists() and not list(tmp_path.glob("outputs"))
    record = read_record(job)
    assert record["status"] == "ok" and record["metrics"]["test/acc_top1"] >= 0
    assert (job / "checkpoints" / "last.ckpt").is_file()
