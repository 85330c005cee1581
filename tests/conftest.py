"""Shared fixtures and helpers: offline W&B, the tiny configs, W&B record reading, and Hydra
configs composed the way `python -m involution.train` does."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Tests never talk to the W&B servers, even on a machine that is logged in.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("HYDRA_FULL_ERROR", None)

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, before its workers start: the CPU kernels compiled into Numba's disk
    cache, float32 and float64 in parallel (``warm_kernels.py``), instead of by whichever tests
    each worker runs first, both workers often compiling the same signature at once. A failure
    here is left to the tests that use the kernels to report."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    warm = [
        subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "warm_kernels.py"), dtype],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for dtype in ("float32", "float64")
    ]
    for process in warm:
        process.wait()


# ---------------------------------------------------------------------------------------------
# Tiny configs: the one home of the small networks and short schedules the tests run. Hydra
# overrides (lists) compose with each other; TINY_MODEL is create_model's keyword arguments.

# The narrowest widths at which involution's default 16 channels per group divide every stage.
TINY_WIDTHS = ["model.base_width=16", "model.stem_width=8"]
# Narrower still, for runs that also set operator.group_channels to 4 or fewer.
NARROW_WIDTHS = ["model.base_width=4", "model.stem_width=8"]
# Small batches and no progress bar in the captured output.
QUIET = ["data.batch_size=16", "callbacks.progress_bar.refresh_rate=0"]
# W&B start-up costs seconds per run; only the tests that read W&B runs pay it.
CSV_ONLY = ["logger=csv"]


def quick_schedule(epochs: int = 1, train_batches: int = 2, val_batches: int = 2) -> list[str]:
    """A few batches an epoch (one test batch), every step logged."""
    return [
        f"trainer.max_epochs={epochs}",
        f"trainer.limit_train_batches={train_batches}",
        f"trainer.limit_val_batches={val_batches}",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
    ]


# A few batches of a digits run at the experiment's widths: every stage of train.py, quickly.
QUICK_TRAIN = [*quick_schedule(), *QUIET]
# The quick schedule on the tiny network: a job is a few seconds.
TINY = [*QUICK_TRAIN, *TINY_WIDTHS]
# The debug modes (conf/debug) bring their own schedule: only the network and the output.
TINY_DEBUG = [*TINY_WIDTHS, *QUIET]
# The architecture of a TINY or TINY_DEBUG checkpoint, for files that do not carry it.
TINY_ARCH = ["experiment=digits", *TINY_WIDTHS]
# The smallest network (create_model keyword arguments), 10 classes of 1-channel images.
TINY_MODEL = {
    "name": "rednet26",
    "num_classes": 10,
    "in_channels": 1,
    "stem": "small",
    "base_width": 4,
    "stem_width": 8,
}

# The smallest detection/segmentation backbone (create_model overrides): rednet26's official
# stem (stride 4 at layer1) at the narrowest widths its default involutions divide.
TINY_BACKBONE = {"base_width": 16, "stem_width": 32}
# A tiny detector (create_detector keyword arguments, bar the name) for 64-96 px images.
TINY_DETECTOR = {
    "backbone": "rednet26",
    "num_classes": 3,
    "backbone_args": TINY_BACKBONE,
    "fpn_channels": 32,
    "box_head_channels": 64,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "min_size": 64,
    "max_size": 96,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 10,
}


def tiny_detector(name: str) -> dict:
    """TINY_DETECTOR for detector ``name`` (RetinaNet has no RPN or box head), with the name."""
    return {
        "name": name,
        **{
            k: v
            for k, v in TINY_DETECTOR.items()
            if name != "retinanet" or not k.startswith(("rpn_", "box_"))
        },
    }


# The digit-scene experiments (detection_digits, segmentation_digits) narrowed: one epoch of two
# steps of four scenes, four val and test scenes; SCENE_TASK[experiment] narrows its heads.
TINY_SCENES = [
    "data.train_size=8",
    "data.val_size=4",
    "data.test_size=4",
    "data.batch_size=4",
    "model.fpn_channels=16",
    "print_config=false",
    *CSV_ONLY,
]
SCENE_FIT = ["trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"]
SCENE_TASK = {
    "detection_digits": [
        "model.box_head_channels=32",
        "model.min_size=64",
        "model.max_size=64",
        "module.warmup_steps=1",
    ],
    "segmentation_digits": ["model.head_channels=16"],
}


# A tiny segmenter (create_segmenter keyword arguments, bar the name).
TINY_SEGMENTER = {
    "backbone": "rednet26",
    "num_classes": 4,
    "backbone_args": TINY_BACKBONE,
    "fpn_channels": 32,
    "head_channels": 32,
}


def tiny_trainer(root: Path, **overrides) -> L.Trainer:
    """A CPU trainer for a few batches of a task test: CSV metrics under ``root``, no
    progress bar or model summary."""
    from lightning.pytorch.loggers import CSVLogger

    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(root),
        "logger": CSVLogger(str(root), name="csv", version=""),
        **overrides,
    }
    return L.Trainer(**settings)


# ---------------------------------------------------------------------------------------------


# W&B's command line of this interpreter's environment (its record reader).
WANDB = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"


def wandb_records(log: Path) -> list[dict]:
    """The records of an offline W&B run file (``wandb/offline-run-*/run-*.wandb``), read with
    W&B's own reader (``wandb leet inspect --json``)."""
    command = [WANDB, "leet", "inspect", "--json", str(log)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def run_module(
    module: str, args: list[str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd`` with W&B offline; output captured."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def once_per_session(tmp_path_factory, name: str, produce: Callable[[Path], dict]) -> dict:
    """``produce(folder)`` (a JSON-able result) once per test session, also under pytest-xdist,
    whose workers are separate processes: the first to ask runs it into a folder of the session's
    temporary directory while the others wait on a lock, then all read its result. The folder is
    shared: tests read it, and copy what they change."""
    session = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        session = session.parent  # the session's, above each worker's own
    result = session / f"{name}.json"
    with (session / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, whatever happened
        if not result.exists():
            folder = session / name
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed may have left a part
            folder.mkdir()
            result.write_text(json.dumps(produce(folder)))
    return json.loads(result.read_text())


def _process(done: subprocess.CompletedProcess) -> dict:
    return {k: getattr(done, k) for k in ("args", "returncode", "stdout", "stderr")}


def run_once_per_session(
    tmp_path_factory, name: str, module: str, args: Callable[[Path], tuple[list[str], Path]]
) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m module *arguments`` in a shared folder, once per session (``once_per_session``);
    ``args(folder)`` gives the arguments and the output directory the tests read."""

    def produce(folder: Path) -> dict:
        arguments, out = args(folder)
        return {"process": _process(run_module(module, arguments, cwd=folder)), "out": str(out)}

    shared = once_per_session(tmp_path_factory, name, produce)
    return subprocess.CompletedProcess(**shared["process"]), Path(shared["out"])


@pytest.fixture(scope="session")
def kernel_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The kernel_reduction sweep narrowed to 2 x 2 on the command line (which wins over its
    params); W&B offline. Shared by the sweep summary, identity and dashboard tests."""

    def args(root: Path) -> tuple[list[str], Path]:
        sweep_dir = root / "multirun" / "2030-01-02" / "03-04-05"
        return [
            "sweep=kernel_reduction",
            "operator.kernel_size=3,5",
            "operator.reduction_ratio=2,4",
            f"hydra.sweep.dir={sweep_dir}",
            *TINY,
        ], sweep_dir

    return run_once_per_session(tmp_path_factory, "sweep", "involution.train", args)


@pytest.fixture(scope="session")
def limit_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """A ``debug=limit`` training run of a tiny RedNet-26 on digits (two epochs of five batches,
    checkpoints, test): the debug-mode, details and evaluation tests read it."""

    def args(root: Path) -> tuple[list[str], Path]:
        run_dir = root / "run"
        return ["debug=limit", *TINY_DEBUG, f"hydra.run.dir={run_dir}"], run_dir

    return run_once_per_session(tmp_path_factory, "limit", "involution.train", args)


@pytest.fixture
def no_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No WANDB_MODE, no API key, no netrc entry: what a fresh machine has."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def compose_entry(config_name: str, run_dir: Path, overrides: list[str]) -> DictConfig:
    """An entry config (train, eval) composed as its entry point does, with Hydra's runtime set:
    output dir ``run_dir``, job number 0."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="involution.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """compose_train(overrides) -> the train config, with Hydra's runtime set to a temporary run
    dir."""
    yield lambda overrides=None: compose_entry("train", tmp_path / "run", overrides or [])
    GlobalHydra.instance().clear()


def run_tiny_sweep(tmp_path: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m involution.train *args`` as a tiny CSV-only multirun into ``tmp_path/multirun``
    (args name the sweep: ``-m`` and the swept values, or an ``hparams_search``)."""
    sweep_dir = tmp_path / "multirun"
    args = [*args, f"hydra.sweep.dir={sweep_dir}", *CSV_ONLY, *TINY]
    return run_module("involution.train", args, cwd=tmp_path), sweep_dir


# A finished sweep of each task, as its jobs leave it (job.json, .hydra/, csv/metrics.csv): the
# metric the sweep is judged by and, per epoch, the validation metrics its task logs.
TASK_SWEEPS = {
    "classification": ("val/acc_top1", ("acc_top1", "acc_top5")),
    "detection": ("val/map", ("map", "map_50", "map_75", "mask_map")),
    "segmentation": ("val/miou", ("miou", "pixel_acc")),
}


def write_task_sweep(root: Path, task: str, epochs: int = 3) -> Path:
    """A 2 x 2 multirun (``operator.kernel_size`` 3/5 x ``model.neck_operator`` convolution /
    involution) of ``task`` under ``root``, W&B-less (CSV only): job ``n``'s metrics rise with
    the epoch and with ``n``; returns ``root``."""
    import csv

    metric, keys = TASK_SWEEPS[task]
    task_keys = ["operator.kernel_size=3,5", "model.neck_operator=convolution,involution"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(
        json.dumps({"hydra": {"overrides": {"task": task_keys}}, "sweep": {"name": task}})
    )
    num = 0
    for kernel in (3, 5):
        for neck in ("convolution", "involution"):
            job = root / str(num)
            (job / ".hydra").mkdir(parents=True)
            (job / "csv").mkdir()
            overrides = [f"operator.kernel_size={kernel}", f"model.neck_operator={neck}"]
            (job / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
            (job / ".hydra" / "config.yaml").write_text(
                json.dumps({"optimized_metric": metric, "logger": {"csv": {}}})
            )
            rows = [
                {"epoch": e, "step": 10 * e, "train/loss_epoch": 2.0 - 0.3 * e - 0.1 * num,
                 **{f"val/{k}": 0.1 * (e + 1) + 0.05 * num + 0.01 * i for i, k in enumerate(keys)}}
                for e in range(epochs)
            ]  # fmt: skip
            with (job / "csv" / "metrics.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            last = rows[-1]
            tests = {f"test/{k}": last[f"val/{k}"] - 0.02 for k in keys}
            metrics = {f"best/{metric}": last[metric], **tests}
            record = {
                "status": "ok", "job": num, "overrides": overrides, "group": f"{task}-g",
                "name": f"{'involution' if num % 2 else 'convolution'}-k{kernel}",
                "params": 1e6 * (num + 1), "macs": 2e7 * (num + 1), "wall_time_s": 30.0,
                "metrics": metrics, "optimized_metric": metric, "run_dir": str(job),
            }  # fmt: skip
            (job / "job.json").write_text(json.dumps(record))
            num += 1
    return root
