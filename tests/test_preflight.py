"""involution.runner.preflight, bad input: every case is one line naming the key or file and what
is allowed, found before training starts, and none of them touches an existing run directory or
checkpoint (the cases only the built objects can show are in test_build.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from involution.models import create_model
from involution.runner.build import build
from involution.runner.preflight import SetupError, check_config, check_overrides, run_cli

from conftest import TINY_WIDTHS

SMALL_MODEL = ["data.image_size=16", *TINY_WIDTHS]


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.strip(), message
    return message


# ---------------------------------------------------------------------------------------------
# Command line: wrong types and mistyped keys


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "trainer.max_epochs=abc",
            "trainer.max_epochs=abc: expected an int or null, got the string 'abc'",
        ),
        ("trainer.precision=fast", "trainer.precision=fast: expected"),
        ("operator.kernel_size=seven", "operator.kernel_size=seven: expected an int"),
        ("data.batch_size=1.5", "data.batch_size=1.5: expected an int"),
        ("module.lr=high", "module.lr=high: expected a number"),
        ("module.nesterov=maybe", "module.nesterov=maybe: expected true or false"),
        (
            "callbacks.step_checkpoint.every_n_train_steps=often",
            "every_n_train_steps=often: expected an int",
        ),
        ("seed=[1,2]", "seed=[1, 2]: expected an int"),
    ],
)
def test_wrong_type_names_the_key_and_the_type(override: str, expected: str) -> None:
    with pytest.raises(SetupError) as error:
        check_overrides([override])
    assert expected in one_line(error.value)


@pytest.mark.parametrize(
    ("override", "closest"),
    [("trainer.max_epoch=3", "trainer.max_epochs"),
     ("operator.kernal_size=3", "operator.kernel_size"), ("model.lr=0.1", "module.lr"),
     ("module.learning_rate=0.1", None), ("data.batchsize=8", "data.batch_size")],
)  # fmt: skip
def test_mistyped_key_names_the_closest_valid_key(override: str, closest: str | None) -> None:
    with pytest.raises(SetupError) as error:
        check_overrides([override])
    message = one_line(error.value)
    key = override.partition("=")[0]
    assert message.startswith(f"{key} is not a config key") and f"+{key}=" in message
    assert (f"did you mean {closest}?" in message) if closest else "did you mean" not in message


def test_valid_overrides_and_sweeps_pass_and_bad_sweep_values_do_not() -> None:
    check_overrides([
        "trainer.max_epochs=3", "operator.group_channels=null", "module.warmup_epochs=0.5",
        "trainer.precision=16-mixed", "trainer.limit_train_batches=0.25", "data=cifar10",
        "data.download=true", "+new_key=1", "model.checkpoint=/x.pth", "hydra.run.dir=/tmp/x",
        "tags=[a,b]", "resume=never", "hydra/launcher=slurm", "experiment=cifar10",
    ])  # fmt: skip
    check_overrides(["-m", "operator.kernel_size=3,5", "data=digits,synthetic"])
    with pytest.raises(SetupError, match="operator.kernel_size=abc: expected an int"):
        check_overrides(["-m", "operator.kernel_size=3,abc"])


def test_cli_wrapper_prints_one_line_and_never_starts_the_task(capsys) -> None:
    started = []
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: started.append(1), "train", argv=["trainer.max_epochs=abc"])
    assert stop.value.code == 2 and not started
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: trainer.max_epochs=abc: expected an int or null, got the string 'abc'"]


# ---------------------------------------------------------------------------------------------
# Out-of-range values, directories, resume


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("operator.kernel_size=4", "operator.kernel_size"),
        ("operator.kernel_size=-3", "operator.kernel_size"),
        ("operator.group_channels=0", "operator.group_channels"),
        ("operator.reduction_ratio=0", "operator.reduction_ratio"),
        ("operator.dilation=0", "operator.dilation"),
        ("model.base_width=0", "model.base_width"),
        ("model.stem_width=-8", "model.stem_width"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.image_size=4", "data.image_size"),
        ("module.lr=0", "module.lr"),
        ("module.lr=-0.1", "module.lr"),
        ("module.momentum=1.5", "module.momentum"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        (
            "callbacks.step_checkpoint.every_n_train_steps=-1",
            "callbacks.step_checkpoint.every_n_train_steps",
        ),
    ],
)
def test_out_of_range_value_names_the_key_and_the_range(
    compose_train, override: str, key: str
) -> None:
    with pytest.raises(SetupError) as error:
        check_config(compose_train([override]))
    message = one_line(error.value)
    assert message.startswith(f"{key} must be ") and ", got " in message


def test_output_directory_that_cannot_be_created_or_written(compose_train, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SetupError) as error:
        check_config(compose_train([f"paths.output_dir={blocker / 'run'}"]))
    assert one_line(error.value) == (
        f"paths.output_dir={blocker / 'run'}: cannot be created, "
        f"{blocker} is a file, not a directory"
    )
    with pytest.raises(
        SetupError, match=r"paths.output_dir=/proc/involution-run: cannot be written"
    ):
        check_config(compose_train(["paths.output_dir=/proc/involution-run"]))


def test_resume_never_refuses_a_directory_with_checkpoints(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(["resume=never"])
    check_config(cfg)  # an empty run directory is fine
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(SetupError, match="resume=never, but .* already holds checkpoints"):
        check_config(cfg)
    with pytest.raises(
        SetupError, match="resume=elsewhere: inside a config it must be one of auto, never"
    ):
        check_config(compose_train(["resume=elsewhere"]))


# ---------------------------------------------------------------------------------------------
# Checkpoint files


@pytest.fixture
def small_state() -> dict:
    return create_model(
        "rednet26", num_classes=10, in_channels=1, stem="small", base_width=16, stem_width=8
    ).state_dict()


def test_bad_checkpoint_files_are_one_line_each(compose_train, tmp_path: Path, small_state) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": small_state}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code = tmp_path / "code.pth"
    torch.save({"state_dict": small_state, "hook": os.system}, code)
    cases = {
        text: "is not a checkpoint (not a file written by torch.save)",
        truncated: "is truncated or corrupt",
        code: "cannot be loaded with weights_only=True: it holds pickled code",
        tmp_path / "absent.pth": "does not exist",
    }
    for path, expected in cases.items():
        for key in ("model.checkpoint", "ckpt_path"):
            with pytest.raises(SetupError) as error:
                check_config(compose_train([*SMALL_MODEL, f"{key}={path}"]))
            message = one_line(error.value)
            assert message.startswith(f"{key}={path}: ") and expected in message, message
            if path == code:  # the refused global is named
                assert (
                    "Unsupported global: GLOBAL posix.system" in message
                    or "GLOBAL os.system" in message
                )
    build(compose_train([*SMALL_MODEL, f"model.checkpoint={good}", "logger=csv"]))  # it loads


# ---------------------------------------------------------------------------------------------
# End to end: an existing run directory is left as it was


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_cli_bad_value_leaves_an_existing_run_directory_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    before = _snapshot(run_dir)
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "involution.train", f"hydra.run.dir={run_dir}",
         "operator.kernel_size=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: operator.kernel_size must be an odd positive int, got 4"], (
        result.stderr
    )
    assert _snapshot(run_dir) == before


def test_missing_data_directory_stops_before_anything_is_printed_or_created(
    compose_train, tmp_path: Path, capsys
) -> None:
    """The data module's constructor runs in the Hydra callback, before Hydra creates the run
    directory: its error is the first and only line, and no run directory exists."""
    from involution.runner.preflight import Preflight

    run_dir = tmp_path / "fresh"
    missing = tmp_path / "nowhere"
    cfg = compose_train(["data=cifar10", f"data.data_dir={missing}", f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as stopped:
        Preflight().on_run_start(config=cfg)
    printed = capsys.readouterr()
    lines = [line for line in printed.err.splitlines() if line.strip()]
    assert stopped.value.code == 2 and printed.out == "" and len(lines) == 1, printed
    assert lines[0].startswith("error: data.data_dir") and str(missing) in lines[0]
    assert not run_dir.exists()
