"""The logger group (conf/logger) instantiated by involution.runner.loggers: derived names,
resumed W&B runs and CSV histories, CSV only, disabled W&B, plain Lightning loggers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from involution.runner.loggers import build_loggers

IDENTITY = {
    "name": "involution-k7",
    "group": "train-digits",
    "tags": ["involution", "kernel_size=7"],
}


def by_type(built: list) -> dict[type, object]:
    return {type(logger): logger for logger in built}


def test_default_group_builds_csv_first_then_offline_wandb(compose_train, no_wandb_env) -> None:
    cfg = compose_train(["logger.wandb.tags=[mine,involution]"])
    built = build_loggers(cfg.logger, IDENTITY, ["paper"])
    assert [type(logger) for logger in built] == [CSVLogger, WandbLogger]
    csv_logger, wandb_logger = built
    assert Path(csv_logger.log_dir) == Path(cfg.paths.output_dir) / "csv"
    init = wandb_logger._wandb_init
    assert (init["name"], init["group"], init["project"]) == (
        "involution-k7",
        "train-digits",
        "involution",
    )
    assert init["tags"] == [
        "involution",
        "kernel_size=7",
        "paper",
        "mine",
    ]  # derived first, no repeats
    assert wandb_logger._offline and init["dir"] == cfg.paths.output_dir
    assert init["id"] is None and init["settings"].init_timeout == 30.0


def test_config_name_and_group_win_over_the_derived_ones(compose_train, no_wandb_env) -> None:
    cfg = compose_train(
        ["logger.wandb.name=mine", "logger.wandb.group=ours", "logger.wandb.mode=offline"]
    )
    init = by_type(build_loggers(cfg.logger, IDENTITY, []))[WandbLogger]._wandb_init
    assert (init["name"], init["group"]) == ("mine", "ours")


def test_resumed_run_continues_its_wandb_run(compose_train, no_wandb_env) -> None:
    cfg = compose_train()
    init = by_type(build_loggers(cfg.logger, IDENTITY, [], wandb_id="abc123"))[
        WandbLogger
    ]._wandb_init
    assert (init["id"], init["resume"]) == ("abc123", "allow")


def test_resumed_run_keeps_the_csv_rows_before_its_step(compose_train) -> None:
    cfg = compose_train(["logger=csv"])
    path = Path(cfg.paths.output_dir) / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{s / 10}\n" for s in range(6)))
    built = build_loggers(cfg.logger, IDENTITY, [], resume_step=3)
    assert [type(logger) for logger in built] == [CSVLogger]
    assert [row["step"] for row in csv.DictReader(path.open())] == ["0", "1", "2"]
    built[0].log_metrics({"train/loss": 0.0}, step=3)
    built[0].save()
    assert [row["step"] for row in csv.DictReader(path.open())] == ["0", "1", "2", "3"]


def test_fresh_run_starts_a_new_csv_file(compose_train) -> None:
    cfg = compose_train(["logger=csv"])
    path = Path(cfg.paths.output_dir) / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step\n0,0\n")
    build_loggers(cfg.logger, IDENTITY, [])
    assert not path.exists()  # Lightning's behaviour: a run without resume_step starts afresh


def test_disabled_wandb_leaves_only_csv(compose_train, no_wandb_env) -> None:
    cfg = compose_train(["logger.wandb.mode=disabled"])
    assert [type(logger) for logger in build_loggers(cfg.logger, IDENTITY, [])] == [CSVLogger]
    cfg = compose_train(["logger.wandb=null"])
    assert [type(logger) for logger in build_loggers(cfg.logger, IDENTITY, [])] == [CSVLogger]


def test_any_lightning_logger_is_an_entry(compose_train) -> None:
    cfg = compose_train(
        [
            "logger=csv",
            "+logger.plain._target_=lightning.pytorch.loggers.CSVLogger",
            "+logger.plain.save_dir=${paths.output_dir}",
            "+logger.plain.name=plain",
        ]  # fmt: skip
    )
    built = build_loggers(cfg.logger, IDENTITY, [])
    assert [Path(logger.log_dir).parts[-2:] for logger in built] == [
        (Path(cfg.paths.output_dir).name, "csv"),
        ("plain", "version_0"),
    ]


def test_entry_without_target_is_one_line_naming_it(compose_train) -> None:
    cfg = compose_train(["logger=csv", "+logger.other.save_dir=x"])
    with pytest.raises(ValueError, match=r"^logger.other needs a _target_"):
        build_loggers(cfg.logger, IDENTITY, [])
