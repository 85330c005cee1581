"""Runs that survive: atomic checkpoints, a training loader that resumes mid-epoch exactly,
``resume=`` on the command line, SIGTERM/SIGKILL/SIGUSR1 then resume (same final accuracy, the
same W&B run, each step logged once), divergence and faults inside a batch in a sweep."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import open_dict, read_write
from torch.utils.data import Dataset

from involution import runs
from involution.data.base import EpochSampler, ResumableLoader, SeededItems
from involution.runner import resume
from involution.runner.guards import Preempted
from involution.train import train

from conftest import CSV_ONLY, QUIET, REPO, TINY_WIDTHS, quick_schedule

TESTS = Path(__file__).resolve().parent
WANDB = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
# A digits run that learns in seconds: 3 epochs x 8 steps at 16x16, checkpoints every 4 steps.
STEPS = 24
SMALL = [
    "trainer.max_epochs=3", "trainer.limit_train_batches=8", "trainer.limit_val_batches=4",
    "trainer.log_every_n_steps=1",
    "data.batch_size=32", "data.image_size=16", "model.base_width=16", "model.stem_width=8",
    "callbacks.progress_bar.refresh_rate=0", "callbacks.step_checkpoint.every_n_train_steps=4",
    "module.lr=0.8", "module.warmup_epochs=0.25", "test=false",
    "+callbacks.fault._target_=faults.Fault",
]  # fmt: skip


def run_train(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    full = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONPATH": path,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "involution.train", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
    )


def val_top1(run_dir: Path, key: str = "val/acc_top1") -> float:
    rows = [r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get(key)]
    return float(rows[-1][key])


def logged_steps(run_dir: Path, key: str = "train/loss_step") -> list[int]:
    return [
        int(r["step"])
        for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open())
        if r.get(key)
    ]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


# ---------------------------------------------------------------------------------------------
# Pieces


class _Noisy(Dataset):
    """Items that draw from the global torch RNG, as augmentations do."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index)]) + torch.rand(1)


def test_loader_resumes_mid_epoch_with_the_same_batches_and_augmentations() -> None:
    def loader(workers: int = 0) -> ResumableLoader:
        sampler = EpochSampler(_Noisy(), num_replicas=1, rank=0, seed=3)
        return ResumableLoader(
            SeededItems(_Noisy()), batch_size=4, sampler=sampler, num_workers=workers
        )

    torch.manual_seed(0)
    first = loader()
    first.sampler.set_epoch(2)
    iterator = iter(first)
    _ = [next(iterator) for _ in range(3)]
    state = first.state_dict()
    rest = list(iterator)
    assert state["epoch"] == 2 and state["batches"] == 3 and len(rest) == 7

    torch.manual_seed(123)  # another process, another RNG state
    second = loader()
    second.sampler.set_epoch(2)
    second.load_state_dict(state)
    resumed = list(second)
    assert len(resumed) == 7 and all(torch.equal(a, b) for a, b in zip(rest, resumed))
    assert second.state_dict()["batches"] == 10
    # the next epoch is whole again, and another order
    second.sampler.set_epoch(3)
    assert len(list(second)) == 10
    # augmentations do not depend on the process's RNG stream, nor on worker processes
    torch.manual_seed(999)
    third = loader(workers=2)
    third.sampler.set_epoch(2)
    third.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rest, third))


def test_an_epoch_in_progress_is_counted_as_started() -> None:
    """``EpochCountedOnResume`` adds the ready/started counts Lightning skips for the epoch after
    a restart on an epoch's last batch (counters as that run's loop has them: one epoch
    processed and completed, none started after it), and leaves consistent counters alone."""
    from types import SimpleNamespace

    from lightning.pytorch.loops.progress import _Progress

    def trainer(ready, started, processed, completed):
        progress = _Progress()
        for tracker in (progress.total, progress.current):
            tracker.ready, tracker.started = ready, started
            tracker.processed, tracker.completed = processed, completed
        return SimpleNamespace(fit_loop=SimpleNamespace(epoch_progress=progress))

    callback = resume.EpochCountedOnResume()
    skipped = trainer(1, 1, 1, 1)  # epoch 1 training, its start never counted
    callback.on_train_batch_start(skipped, None, None, 0)
    counts = skipped.fit_loop.epoch_progress
    assert (counts.total.ready, counts.total.started, counts.current.started) == (2, 2, 2)
    callback.on_train_batch_start(skipped, None, None, 1)  # once only
    assert counts.total.started == 2
    consistent = trainer(3, 3, 2, 2)  # the third epoch in progress
    callback.on_train_batch_start(consistent, None, None, 0)
    assert consistent.fit_loop.epoch_progress.total.started == 3


def test_atomic_checkpoint_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    io = resume.AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def killed_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process stops in the middle of the write

    monkeypatch.setattr(resume.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    state = torch.load(path, weights_only=True)
    assert state["global_step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_latest_checkpoint_is_the_newest_last_or_slurm_one(tmp_path: Path) -> None:
    assert resume.latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    for name, stamp in (
        ("checkpoints/best-epoch003.ckpt", 3),
        ("checkpoints/last.ckpt", 1),
        ("hpc_ckpt_1.ckpt", 2),
    ):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (stamp, stamp))
    assert resume.latest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"


def _fake_run(
    root: Path, name: str, status: str, overrides: list[str], checkpoint: bool = True
) -> Path:
    run_dir = root / "outputs" / "train" / "2030-01-01" / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if checkpoint:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    record = {"status": status, "host": "elsewhere", "pid": 1}
    (run_dir / runs.RECORD).write_text(json.dumps(record))
    return run_dir


def test_resume_argv_continues_a_run_in_place_with_its_overrides(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = _fake_run(tmp_path, "10-00-00", "ok", ["operator.kernel_size=3"])
    stopped = _fake_run(
        tmp_path, "11-00-00", "preempted", ["operator.kernel_size=5", "hydra.run.dir=x"]
    )
    _fake_run(tmp_path, "12-00-00", "diverged", ["operator.kernel_size=7"])
    _fake_run(tmp_path, "13-00-00", "failed", ["operator.kernel_size=9"], checkpoint=False)
    expected = [
        "operator.kernel_size=5",
        f"hydra.run.dir={stopped.relative_to(tmp_path)}",
        "resume=auto",
        "trainer.max_epochs=9",
    ]
    assert resume.resume_argv(["resume=latest", "trainer.max_epochs=9"]) == expected
    assert resume.resume_argv([f"resume={done}"])[:2] == [
        "operator.kernel_size=3",
        f"hydra.run.dir={done}",
    ]
    assert resume.resume_argv(["resume=auto", "a=1"]) == ["resume=auto", "a=1"]
    with pytest.raises(resume.ResumeError, match="no such run directory"):
        resume.resume_argv([f"resume={tmp_path / 'nowhere'}"])
    with pytest.raises(resume.ResumeError, match="no checkpoint"):
        resume.resume_argv([f"resume={tmp_path / 'outputs'}"])


def test_slurm_runs_get_lightnings_auto_requeue(monkeypatch) -> None:
    assert [type(p) for p in resume.trainer_plugins()] == [resume.AtomicCheckpointIO]
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    plugins = resume.trainer_plugins()
    slurm = [p for p in plugins if isinstance(p, SLURMEnvironment)]
    assert slurm and slurm[0].auto_requeue and slurm[0].requeue_signal == signal.SIGUSR1


def test_makefile_resume_target() -> None:
    text = (REPO / "Makefile").read_text()
    assert "-m involution.train resume=latest $(ARGS)" in text


# ---------------------------------------------------------------------------------------------
# In-process runs


def _compose_in(compose_train, overrides: list[str], run_dir: Path):
    cfg = compose_train(overrides)
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


# conftest's tiny network and quick schedule (4 training batches), 16x16 images, no test stage.
TINY = [
    *quick_schedule(train_batches=4), *TINY_WIDTHS, *QUIET, *CSV_ONLY, "data.image_size=16",
    "test=false",
]  # fmt: skip


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(compose_train, tmp_path: Path) -> None:
    results = []
    for name in ("a", "b"):
        cfg = _compose_in(compose_train, [*TINY, "seed=7"], tmp_path / name)
        metrics = train(cfg)
        metrics.pop("wall_time_s")
        results.append(metrics)
        saved = (tmp_path / name / "csv" / "metrics.csv").read_text()
    assert results[0] == results[1] and "val/acc_top1" in results[0]
    assert saved == (tmp_path / "a" / "csv" / "metrics.csv").read_text()
    # every seed the run uses is in its config (the W&B config is this config, see test_train)
    assert cfg.seed == 7 and cfg.data.seed == 7


def test_sigusr1_checkpoints_the_current_step_and_stops(
    compose_train, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("INVOLUTION_FAULT", "sigusr1")
    monkeypatch.setenv("INVOLUTION_FAULT_STEP", "2")
    cfg = _compose_in(
        compose_train, [*TINY, "+callbacks.fault._target_=faults.Fault"], tmp_path / "run"
    )
    with pytest.raises(Preempted) as stopped:
        train(cfg)
    assert stopped.value.signum == signal.SIGUSR1 and stopped.value.step == 3
    assert checkpoint_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == 3
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handler removed with the trainer


# ---------------------------------------------------------------------------------------------
# Subprocess runs: a sweep of faults (its fault-free job is the uninterrupted reference), and a run
# stopped by SIGTERM, then SIGKILL, then continued


@pytest.fixture(scope="module")
def fault_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("faults")
    sweep_dir = root / "multirun"
    args = ["-m", "hydra/callbacks=sweep_summary",
            "+callbacks.fault.kind=none,nan_weights,error,oom", "+callbacks.fault.step=8",
            f"hydra.sweep.dir={sweep_dir}", *CSV_ONLY, *SMALL]  # fmt: skip
    return run_train(args, cwd=root), sweep_dir


@pytest.mark.slow
def test_sweep_records_divergence_and_faults_and_goes_on(fault_sweep) -> None:
    result, sweep_dir = fault_sweep
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 ok, 2 failed, 1 diverged" in result.stdout
    frame = runs.load_summary(sweep_dir)
    assert list(frame["status"]) == ["ok", "diverged", "failed", "failed"]
    reference = sweep_dir / "0"
    assert (
        val_top1(reference) > 0.2 and val_top1(reference, "val/loss") < 2.2
    )  # it learns (chance: 0.1, 2.3)
    assert logged_steps(reference) == list(range(STEPS))

    diverged = runs.read_record(sweep_dir / "1")
    last = sweep_dir / "1" / "checkpoints" / "last.ckpt"
    assert (
        "step 8" in diverged["error"] and f"last good checkpoint {last} (kept)" in diverged["error"]
    )
    assert diverged["checkpoint"] == str(last) and "diverged" in frame.loc[1, "error"]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4  # the step-8 checkpoint of NaN weights was refused
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )

    for job, error in (
        (2, "RuntimeError: injected fault at step 8"),
        (3, "OutOfMemoryError: CUDA out of memory"),
    ):
        record = runs.read_record(sweep_dir / str(job))
        assert record["status"] == "failed" and record["error"].startswith(error), record["error"]
        assert (
            checkpoint_step(sweep_dir / str(job) / "checkpoints" / "last.ckpt") == 8
        )  # intact, loadable
        assert (sweep_dir / str(job) / ".hydra" / "config.yaml").is_file()


def _wandb_history(log: Path) -> tuple[str, list[dict]]:
    """(run id, history rows) of one offline segment, read with W&B's own reader. The id is the
    one in the segment's directory name (offline-run-<time>-<id>): a segment cut short by SIGKILL
    may hold no run record; when the record is there, it must say the same."""
    records = _records(log)
    run_id = log.parent.name.rsplit("-", 1)[-1]
    assert all(r["run"]["run_id"] == run_id for r in records if r["type"] == "run")
    return run_id, [r["history"]["item"] for r in records if r["type"] == "history"]


def _records(log: Path) -> list[dict]:
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(log)], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_ends_as_the_uninterrupted_run(
    fault_sweep, tmp_path: Path
) -> None:
    _, sweep_dir = fault_sweep
    reference = val_top1(sweep_dir / "0")
    # SIGTERM on the last batch of the first epoch (8 batches): Lightning restarts such a
    # checkpoint "mid epoch" and miscounts the next epoch (runner.resume.EpochCountedOnResume);
    # SIGKILL after a step checkpoint that the resumed run wrote (16), from which the last run
    # continues. Other positions: TERM_AT / KILL_AT.
    term_at = int(os.environ.get("TERM_AT", 7))
    kill_at = int(os.environ.get("KILL_AT", 19))
    run_dir = tmp_path / "run"
    command = [f"hydra.run.dir={run_dir}", *SMALL]
    note = f"(SIGTERM at step {term_at}, SIGKILL at step {kill_at})"

    stopped = run_train(
        command, tmp_path, INVOLUTION_FAULT="sigterm", INVOLUTION_FAULT_STEP=str(term_at)
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    record = runs.read_record(run_dir)
    assert record["status"] == "preempted" and record["checkpoint"] == str(
        run_dir / "checkpoints" / "last.ckpt"
    )
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == term_at + 1, note

    killed = run_train(
        command, tmp_path, INVOLUTION_FAULT="sigkill", INVOLUTION_FAULT_STEP=str(kill_at)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    finished = run_train([f"resume={run_dir}"], tmp_path)  # `make resume` would pick this run too
    assert finished.returncode == 0, finished.stderr[-3000:]
    record = runs.read_record(run_dir)
    assert record["status"] == "ok" and record["resumes"] == 2
    assert abs(val_top1(run_dir) - reference) <= 0.005, note
    # not just close: the resumed run computed what the uninterrupted one did
    assert val_top1(run_dir, "val/loss") == pytest.approx(
        val_top1(sweep_dir / "0", "val/loss"), rel=1e-5
    ), note
    assert logged_steps(run_dir) == list(range(STEPS)), note  # CSV: each step once, in order

    logs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 3
    segments = [_wandb_history(log) for log in logs]
    assert len({run_id for run_id, _ in segments}) == 1  # one W&B run, continued twice
    assert any(r["type"] == "run" for r in _records(logs[2]))
    steps = [
        [item["trainer/global_step"] for item in history if "train/loss_step" in item]
        for _, history in segments
    ]
    # SIGTERM: every step up to the checkpoint logged once, none of them again after it (the killed
    # segment's rows may not have reached its file at all: SIGKILL leaves no time to flush)
    assert steps[0] == list(range(term_at + 1)) and all(
        s > term_at for seg in steps[1:] for s in seg
    ), note
    assert not steps[1] or steps[1][0] == term_at + 1, note
    # the last segment starts at the checkpoint before the SIGKILL (what the killed process had not
    # yet handed to W&B is lost with it: SIGKILL leaves no time to flush)
    assert steps[2][0] == max(term_at + 1, kill_at // 4 * 4) and steps[2] == list(
        range(steps[2][0], STEPS)
    ), note
