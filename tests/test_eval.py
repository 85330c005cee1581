"""`python -m involution.eval`: a checkpoint of this project or an official mmcls state dict,
evaluated on the test or val split; bad input is one line naming the problem."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from involution.eval import METRICS_JSON, evaluate, options
from involution.models import create_model
from involution.models.checkpoint import official_names
from involution.runner.build import Run, build
from involution.runner.preflight import SetupError

from conftest import CSV_ONLY, REPO, TINY_ARCH, compose_entry, run_module, wandb_records


@pytest.fixture
def compose_eval(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """compose_eval(overrides) -> the eval config with Hydra's runtime set (CSV logger only)."""
    base = [*CSV_ONLY, "print_config=false"]
    yield lambda overrides: compose_entry("eval", tmp_path / "eval", [*base, *overrides])
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def trained(limit_run) -> Path:
    result, run_dir = limit_run
    assert result.returncode == 0, result.stderr[-3000:]
    return next((run_dir / "checkpoints").glob("best-*.ckpt"))


def mmcls_file(lightning_ckpt: Path, path: Path) -> Path:
    """The checkpoint's network saved the way the official code saves RedNets (mmcls names)."""
    checkpoint = torch.load(lightning_ckpt, weights_only=True)
    arguments = checkpoint["hyper_parameters"]["model"]
    model = create_model(**arguments)
    names = official_names(model)
    weights = {
        k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")
    }
    state = {
        (f"head.{k}" if k.startswith("fc.") else f"backbone.{names[k]}"): v
        for k, v in weights.items()
    }
    torch.save({"state_dict": state, "meta": {"mmcls_version": "0.12.0"}}, path)
    return path


def build_evaluation(cfg: DictConfig) -> Run:
    """The evaluation's run, built as ``python -m involution.eval`` builds it."""
    return build(cfg, **options(cfg))


def run_test_top1(run_dir: Path) -> float:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return float(next(r["test/acc_top1"] for r in rows if r.get("test/acc_top1")))


@pytest.mark.slow
def test_lightning_checkpoint_reproduces_the_runs_test_accuracy(
    trained: Path, limit_run, compose_eval
) -> None:
    """The run tested its best checkpoint on two batches of 16; so does this evaluation."""
    result = evaluate(
        compose_eval([f"ckpt_path={trained}", "data.batch_size=16", "trainer.limit_test_batches=2"])
    )
    assert (
        result["checkpoint_kind"] == "lightning"
        and result["model"] == "rednet26"
        and result["split"] == "test"
    )
    assert result["top1"] == pytest.approx(run_test_top1(limit_run[1]))
    assert 0 <= result["top5"] <= 1 and result["top1"] <= result["top5"] and result["loss"] > 0
    saved = json.loads((Path(HydraConfig.get().runtime.output_dir) / METRICS_JSON).read_text())
    assert saved == json.loads(json.dumps(result))


@pytest.mark.slow
def test_official_mmcls_layout_gives_the_same_numbers(
    trained: Path, compose_eval, tmp_path: Path
) -> None:
    official = mmcls_file(trained, tmp_path / "rednet26_official.pth")
    few = ["split=val", "trainer.limit_val_batches=2"]
    native = evaluate(compose_eval([f"ckpt_path={trained}", *few]))
    result = evaluate(compose_eval([f"ckpt_path={official}", *few, *TINY_ARCH]))
    assert result["checkpoint_kind"] == "state_dict" and result["split"] == "val"
    for key in ("top1", "top5", "loss"):
        assert result[key] == pytest.approx(native[key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "overrides", "words"),
    [
        (
            "another architecture",
            ["ckpt_path={official}"],
            ["does not fit model=rednet26", "base_width=64", "mismatched"],
        ),
        (
            "another model named",
            ["ckpt_path={trained}", "model=rednet50"],
            ["model.name=rednet50", "holds a rednet26"],
        ),
        (
            "other classes",
            ["ckpt_path={trained}", "data=synthetic", "data.num_classes=7", "data.in_channels=1"],
            ["data=synthetic has 7 classes", "classifies 10"],
        ),
        (
            "other channels",
            ["ckpt_path={trained}", "data=synthetic"],
            ["data=synthetic has 3-channel images", "takes 1 channels"],
        ),
        ("bad split", ["ckpt_path={trained}", "split=train"], ["split must be one of"]),
    ],
)
def test_bad_input_is_one_line(
    case, overrides, words, trained: Path, compose_eval, tmp_path: Path
) -> None:
    official = mmcls_file(trained, tmp_path / "official.pth")
    cfg = compose_eval([o.format(trained=trained, official=official) for o in overrides])
    with pytest.raises(SetupError) as error:
        build_evaluation(cfg)
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, ["ckpt_path is not set"]),
        ("missing", ["no such file"]),
        ("text", ["is not a loadable checkpoint"]),
        ("tensor", ["holds a Tensor"]),
    ],
)
def test_unreadable_checkpoint_is_one_line(content, words, compose_eval, tmp_path: Path) -> None:
    path = tmp_path / "file.ckpt"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    cfg = compose_eval([] if content is None else [f"ckpt_path={path}"])
    with pytest.raises(SetupError) as error:
        build_evaluation(cfg)
    assert "\n" not in str(error.value) and all(w in str(error.value) for w in words)


@pytest.mark.slow
def test_cli_prints_json_saves_it_and_logs_to_wandb(trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "eval"
    args = [f"ckpt_path={trained}", "trainer.limit_test_batches=2", f"hydra.run.dir={run_dir}"]
    result = run_module("involution.eval", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run_dir / METRICS_JSON).read_text())
    printed, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.rindex("\n{\n") + 1 :])
    assert printed == saved and {
        "top1",
        "top5",
        "loss",
        "checkpoint",
        "model",
        "data",
        "split",
    } <= set(saved)
    assert (run_dir / "config_tree.log").is_file() and (
        run_dir / ".hydra" / "config.yaml"
    ).is_file()
    logs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    updates = [r["summary"]["update"] for r in wandb_records(logs[0]) if r["type"] == "summary"]
    summary = {key: value for update in updates for key, value in update.items()}
    assert summary["eval/top1"] == pytest.approx(saved["top1"]) and "test/acc_top1" in summary


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_module(
        "involution.eval",
        [
            f"ckpt_path={tmp_path / 'nope.ckpt'}",
            f"hydra.run.dir={tmp_path / 'eval'}",
            "print_config=false",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # the preflight checks (involution.runner.preflight) answer before the builder's own runs
    assert len(lines) == 1 and lines[0].startswith("error: ckpt_path="), result.stderr
    assert str(tmp_path / "nope.ckpt") in lines[0] and "does not exist" in lines[0], result.stderr


def test_make_eval_quotes_the_checkpoint_for_hydra(compose_eval) -> None:
    out = (
        subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-n",
                "eval",
                "CKPT=runs/epoch=3-step=40.ckpt",
                "ARGS=split=val",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.rstrip()
        .splitlines()[-1]
    )
    assert out.endswith("-m involution.eval \"ckpt_path='runs/epoch=3-step=40.ckpt'\" split=val")
    assert (
        compose_eval(["ckpt_path='runs/epoch=3-step=40.ckpt'"]).ckpt_path
        == "runs/epoch=3-step=40.ckpt"
    )
