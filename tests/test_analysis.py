"""involution.analysis: sweep tables (multirun and W&B), kernel capture, costs, benchmarks, figures,
and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.image import imread

from involution import analysis
from involution.analysis import nbtools
from involution.analysis.errors import (
    AnalysisError,
    CheckpointError,
    NotAMultirunError,
    WandbUnavailableError,
)
from involution.ops import involution2d
from involution.tasks import ImageClassifier

from analysis_artifacts import Artifacts, make_artifacts
from conftest import TINY_MODEL

INVOLUTION = {"name": "involution", "kernel_size": 3, "group_channels": 4, "reduction_ratio": 4}
CONVOLUTION = {"name": "convolution", "kernel_size": 3}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    assert error.value._render_traceback_() == [
        f"\x1b[0;31m{type(error.value).__name__}\x1b[0m: {message}"
    ]
    return message


# ---------------------------------------------------------------------------------------------
# fixtures: checkpoints written the way Lightning does (no training), synthetic multiruns


def save_checkpoint(path: Path, operator: dict, **model) -> Path:
    torch.manual_seed(0)
    module = ImageClassifier({**TINY_MODEL, **model, "operator": operator})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2",
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("checkpoints")
    return SimpleNamespace(
        involution=save_checkpoint(root / "inv" / "checkpoints" / "best-epoch000.ckpt", INVOLUTION),
        convolution=save_checkpoint(
            root / "conv" / "checkpoints" / "best-epoch000.ckpt", CONVOLUTION
        ),
    )


def write_job(root: Path, num: int, overrides: list[str], val: list[float], operator: dict) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"operator": operator, "seed": 1}))
    (job / "csv").mkdir()
    rows = [
        {
            "epoch": e,
            "step": e,
            "train/loss_step": 2.0 - e * 0.1,
            "val/acc_top1": v,
            "val/acc_top5": min(1, v + 0.3),
        }
        for e, v in enumerate(val)
    ]
    rows.append({"epoch": len(val), "step": len(val), "test/acc_top1": val[-1]})
    pd.DataFrame(rows).to_csv(job / "csv" / "metrics.csv", index=False)
    (job / "csv" / "hparams.yaml").write_text(
        yaml.safe_dump({"params": 1000 * (num + 1), "macs": 5000 * (num + 1)})
    )
    return job


@pytest.fixture
def fake_multirun(tmp_path: Path) -> Path:
    """A multirun of four jobs: kernel size 3/5 x reduction ratio 2/4."""
    root = tmp_path / "sweep"
    task = ["operator.kernel_size=3,5", "operator.reduction_ratio=2,4"]
    root.mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    num = 0
    for k in (3, 5):
        for r in (2, 4):
            operator = {
                "name": "involution",
                "kernel_size": k,
                "reduction_ratio": r,
                "group_channels": 4,
            }
            write_job(
                root,
                num,
                [f"operator.kernel_size={k}", f"operator.reduction_ratio={r}"],
                [0.2 + 0.1 * num, 0.3 + 0.1 * num],
                operator,
            )
            num += 1
    return root


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    return make_artifacts(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# errors and locations


def test_analysis_error_is_one_line() -> None:
    with pytest.raises(AnalysisError) as error:
        raise NotAMultirunError("first\nsecond   third")
    assert one_line(error) == "first second third"


def test_is_multirun_and_latest(tmp_path: Path, fake_multirun: Path, monkeypatch) -> None:
    assert analysis.is_multirun(fake_multirun)
    assert not analysis.is_multirun(fake_multirun / "0")
    assert not analysis.is_multirun(tmp_path / "missing")
    base = tmp_path / "multirun"
    older, newer = base / "train" / "a", base / "train" / "b"
    for folder, stamp in ((older, 1000), (newer, 2000)):
        folder.mkdir(parents=True)
        (folder / "multirun.yaml").write_text("{}")
        import os

        os.utime(folder / "multirun.yaml", (stamp, stamp))
    assert analysis.latest_multirun(base) == newer
    with pytest.raises(NotAMultirunError) as error:
        analysis.latest_multirun(tmp_path / "nothing")
    assert "no multirun found" in one_line(error)


def test_project_root_from_the_notebooks_folder(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    assert analysis.project_root(tmp_path / "notebooks") == tmp_path.resolve()


def test_find_checkpoint_by_operator(fake_multirun: Path, tmp_path: Path) -> None:
    for job in ("0", "1"):
        (fake_multirun / job / "checkpoints").mkdir()
        (fake_multirun / job / "checkpoints" / "best-epoch001.ckpt").write_bytes(b"")
    found = analysis.find_checkpoint("involution", roots=[fake_multirun])
    assert found.name == "best-epoch001.ckpt" and found.parent.parent.name in ("0", "1")
    with pytest.raises(CheckpointError) as error:
        analysis.find_checkpoint("convolution", roots=[fake_multirun])
    assert "operator=convolution" in one_line(error)


def test_default_checkpoint_is_the_best_finished_single_run_never_a_sweep_job(
    fake_multirun: Path, tmp_path: Path, monkeypatch
) -> None:
    """Left unset, a notebook takes the best finished single run under outputs/: not the newest
    checkpoint on disk, not a (short, better-scoring or newer) sweep job, not a failed run."""
    import json
    import os

    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)

    def checkpoint(run_dir: Path, record: dict, stamp: int) -> Path:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (run_dir / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"operator": {"name": "involution"}})
        )
        (run_dir / "job.json").write_text(json.dumps(record))
        path = run_dir / "checkpoints" / "best-epoch003.ckpt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (stamp, stamp))
        return path

    def ok(score: float, job: int | None = None) -> dict:
        return {"status": "ok", "job": job, "metrics": {"best/val/acc_top1": score}}

    runs = tmp_path / "outputs" / "train"
    good = checkpoint(runs / "good", ok(0.97), 1000)
    checkpoint(runs / "worse-newer", ok(0.90), 2000)
    checkpoint(runs / "failed-newest", {"status": "failed", "job": None, "metrics": {}}, 3000)
    sweep = tmp_path / "multirun" / "train" / "x"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    checkpoint(sweep / "0", ok(0.99, job=0), 4000)
    assert analysis.find_checkpoint("involution") == good
    with pytest.raises(CheckpointError) as error:
        analysis.find_checkpoint("convolution")
    assert "sweep jobs are not taken" in one_line(error)


# ---------------------------------------------------------------------------------------------
# sweeps


def test_load_sweep_of_a_multirun(fake_multirun: Path) -> None:
    table = analysis.load_sweep(fake_multirun)
    assert len(table) == 4
    assert set(analysis.swept_columns(table)) == {
        "operator.kernel_size",
        "operator.reduction_ratio",
    }
    assert list(table["operator.kernel_size"]) == [3, 3, 5, 5]
    assert table["best_val_top1"].tolist() == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert table["params"].tolist() == [1000, 2000, 3000, 4000]  # from csv/hparams.yaml
    assert not any(
        (fake_multirun / name).exists() for name in ("summary.csv", "summary.md")
    )  # read-only


def test_ablation_table_and_config_keys(fake_multirun: Path) -> None:
    table = analysis.load_sweep(fake_multirun)
    pivot = analysis.ablation_table(table)
    assert pivot.shape == (2, 2)
    assert pivot.loc[5, 4] == pytest.approx(0.6)
    with_operator = analysis.with_config_keys(table, ["operator", "operator.group_channels"])
    assert set(with_operator["operator"]) == {"involution"} and set(
        with_operator["operator.group_channels"]
    ) == {4}
    overview = analysis.overview(table)
    assert overview["best_val_top1"].iloc[0] == pytest.approx(0.6)


def test_load_sweep_of_a_summary_csv(fake_multirun: Path, tmp_path: Path) -> None:
    table = analysis.load_sweep(fake_multirun)
    path = tmp_path / "summary.csv"
    table.to_csv(path, index=False)
    again = analysis.load_sweep(path)
    assert again["best_val_top1"].tolist() == pytest.approx(table["best_val_top1"].tolist())
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(NotAMultirunError) as error:
        analysis.load_sweep(tmp_path / "other.csv")
    assert "not a sweep summary" in one_line(error)


@pytest.mark.parametrize("case", ["single run", "plain folder", "missing"])
def test_not_a_multirun_is_one_line(fake_multirun: Path, tmp_path: Path, case: str) -> None:
    path = {
        "single run": fake_multirun / "0",
        "plain folder": tmp_path,
        "missing": tmp_path / "nope",
    }[case]
    with pytest.raises(NotAMultirunError) as error:
        analysis.load_sweep(path)
    message = one_line(error)
    assert str(path) in message
    if case == "single run":
        assert "single run" in message


def test_training_curves(fake_multirun: Path) -> None:
    table = analysis.load_sweep(fake_multirun)
    curves = analysis.training_curves(table, top=2)
    assert list(curves) == ["3", "2"]
    assert curves["3"]["val/acc_top1"].dropna().tolist() == pytest.approx([0.5, 0.6])
    with pytest.raises(AnalysisError) as error:
        analysis.training_curves(table, ["7"])
    assert "unknown jobs" in one_line(error)


@pytest.mark.slow
def test_load_sweep_of_a_real_multirun(artifacts: Artifacts) -> None:
    table = analysis.load_sweep(artifacts.multirun)
    assert table["job"].tolist() == ["0", "1"]
    assert table["operator.kernel_size"].tolist() == [3, 5]
    assert (
        table["best_val_top1"].between(0, 1).all()
        and (table["params"] > 0).all()
        and (table["macs"] > 0).all()
    )
    curves = analysis.training_curves(table)
    assert set(curves) == {"0", "1"} and all("val/acc_top1" in c for c in curves.values())


# ---------------------------------------------------------------------------------------------
# W&B


class FakeRun:
    def __init__(self, name: str, kernel: int, top1: list[float], state: str = "finished") -> None:
        self.name, self.state = name, state
        self.path = ["me", "involution", f"id-{name}"]
        self.config = {
            "config": {
                "operator": {"name": "involution", "kernel_size": kernel, "reduction_ratio": 4}
            },
            "params": 100 * kernel,
            "macs": 1000 * kernel,
        }
        self.summary = {"val/acc_top1": top1[-1], "test/acc_top1": 0.5, "_runtime": 12.0}
        self._top1 = top1

    def history(self, keys=None, pandas=True, samples=None):
        frame = pd.DataFrame(
            {
                "epoch": range(len(self._top1)),
                "val/acc_top1": self._top1,
                "val/acc_top5": [1.0] * len(self._top1),
                "trainer/global_step": range(len(self._top1)),
            }
        )
        return frame[keys] if keys else frame


class FakeApi:
    def __init__(self, runs: list[FakeRun] | None = None, error: Exception | None = None) -> None:
        self._runs, self._error, self.filters = runs or [], error, None

    def runs(self, path, filters=None):
        if self._error is not None:
            raise self._error
        self.filters = filters
        return self._runs

    def run(self, path):
        return next(r for r in self._runs if "/".join(r.path) == path)


def test_wandb_runs_become_the_sweep_table() -> None:
    api = FakeApi([FakeRun("a", 3, [0.2, 0.6, 0.5]), FakeRun("b", 5, [0.3, 0.4], state="crashed")])
    table = analysis.load_wandb_sweep("me/involution", group="g1", api=api)
    assert api.filters == {"group": "g1"}
    assert table["job"].tolist() == ["a", "b"]
    assert table["best_val_top1"].tolist() == pytest.approx(
        [0.6, 0.4]
    )  # best of the history, not the last
    assert table["operator.kernel_size"].tolist() == [3, 5]
    assert "operator.reduction_ratio" not in table  # not swept
    assert table["status"].tolist() == ["ok", "crashed"]
    assert table["macs"].tolist() == [3000, 5000]
    curves = analysis.training_curves(table, ["a"], api=api)
    assert (
        curves["a"]["val/acc_top1"].tolist() == pytest.approx([0.2, 0.6, 0.5])
        and "step" in curves["a"]
    )


def test_wandb_top5_is_that_of_the_best_top1_epoch() -> None:
    """The W&B table reads a run's history as the multirun summary reads metrics.csv."""
    run = FakeRun("a", 3, [0.2, 0.6, 0.5])
    top5 = [0.9, 0.8, 0.95]
    history = pd.DataFrame({"val/acc_top1": run._top1, "val/acc_top5": top5})
    run.history = lambda keys=None, pandas=True, samples=None: history
    table = analysis.load_wandb_sweep("me/involution", api=FakeApi([run]))
    assert table.loc[0, "best_val_top1"] == pytest.approx(0.6)
    assert table.loc[0, "best_val_top5"] == pytest.approx(0.8)  # not the best top-5, 0.95
    assert table.loc[0, "val_top1"] == pytest.approx(0.5) and table.loc[0, "epochs"] == 3
    assert table.loc[0, "test_top1"] == pytest.approx(0.5)  # the run summary's


def test_the_dashboards_summary_run_is_not_a_job() -> None:
    summary_run = FakeRun("kernel_reduction-summary", 0, [0.0])
    summary_run.job_type = "sweep-summary"
    table = analysis.load_wandb_sweep(
        "me/involution", group="g1", api=FakeApi([FakeRun("a", 3, [0.5]), summary_run])
    )
    assert table["job"].tolist() == ["a"]


def test_wandb_errors_are_one_line() -> None:
    with pytest.raises(WandbUnavailableError) as error:
        analysis.load_wandb_sweep(
            "me/nope", api=FakeApi(error=ValueError("Could not find project nope\nmore"))
        )
    assert one_line(error) == "W&B project 'me/nope': ValueError: Could not find project nope"
    with pytest.raises(WandbUnavailableError) as error:
        analysis.load_wandb_sweep("me/empty", group="g", api=FakeApi([]))
    assert "no runs in group 'g'" in one_line(error)


def test_unreachable_wandb_host_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(WandbUnavailableError) as error:
        analysis.load_sweep(wandb_project="me/involution", timeout=2)
    assert time.perf_counter() - started < 10
    assert "cannot be reached" in one_line(error)


def test_wandb_without_api_key(monkeypatch, tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        with pytest.raises(WandbUnavailableError) as error:
            analysis.load_wandb_sweep("me/involution", timeout=2)
    assert "wandb login" in one_line(error)


# ---------------------------------------------------------------------------------------------
# checkpoints and kernels


def test_load_involution_model(checkpoints) -> None:
    model = analysis.load_involution_model(checkpoints.involution)
    assert model.operator == "involution" and model.name == "rednet26"
    assert not model.network.training
    names = list(analysis.involution_layers(model.network))
    assert names[0] == "layer1.0.conv2" and len(names) == 8
    table = analysis.layer_table(model.network)
    assert table["groups"].tolist()[0] == 1 and table["groups"].tolist()[-1] == 8


@pytest.mark.parametrize(
    ("load", "given", "phrase"),
    [
        (analysis.load_involution_model, "convolution", "not involution"),
        (analysis.load_convolution_model, "involution", "not convolution"),
    ],
)
def test_checkpoint_of_the_other_operator_is_one_line(checkpoints, load, given, phrase) -> None:
    with pytest.raises(CheckpointError) as error:
        load(getattr(checkpoints, given))
    message = one_line(error)
    assert phrase in message and f"with {given} as spatial operator" in message


def test_bad_checkpoints_are_one_line(tmp_path: Path, checkpoints) -> None:
    cases = {}
    cases["missing"] = (tmp_path / "none.ckpt", "does not exist")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    cases["garbage"] = (garbage, "not a readable PyTorch checkpoint")
    plain = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    cases["plain"] = (plain, "not a checkpoint of involution.train")
    # weights of one architecture under the hyperparameters of another (wider network)
    state = torch.load(checkpoints.involution, weights_only=True)
    state["hyper_parameters"]["model"]["base_width"] = 8
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    cases["other architecture"] = (other, "do not fit")
    for path, phrase in cases.values():
        with pytest.raises(CheckpointError) as error:
            analysis.load_classifier(path)
        assert phrase in one_line(error), phrase


def test_capture_kernels_gives_the_kernels_the_layer_applied(checkpoints) -> None:
    model = analysis.load_involution_model(checkpoints.involution)
    images = torch.randn(2, 1, 32, 32)
    seen = {}
    layers = analysis.involution_layers(model.network)
    handles = [
        m.register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (i[0].clone(), o.clone()))
        )
        for name, m in layers.items()
    ]
    captures = analysis.capture_kernels(model, images)
    for handle in handles:
        handle.remove()
    assert list(captures) == [
        "layer1.0.conv2",
        "layer2.0.conv2",
        "layer3.0.conv2",
        "layer4.0.conv2",
    ]
    for name, layer in captures.items():
        x, out = seen[name]
        assert layer.kernel.shape == (2, layers[name].groups, 3, 3, *out.shape[-2:])
        torch.testing.assert_close(involution2d(x, layer.kernel, layer.stride), out)
    assert all(not m._forward_hooks for m in layers.values())  # hooks removed
    only = analysis.capture_kernels(model, images, ["layer3.1.conv2"])
    assert list(only) == ["layer3.1.conv2"]
    with pytest.raises(AnalysisError) as error:
        analysis.capture_kernels(model, images, ["layer9.0.conv2"])
    assert "layer1.0.conv2" in one_line(error)


def test_pixel_to_kernel_position_and_window() -> None:
    kernel = torch.zeros(1, 2, 3, 3, 16, 16)
    layer = analysis.LayerKernels(
        "l", kernel, input_size=(32, 32), image_size=(32, 32), stride=2, dilation=1
    )
    assert layer.position((0, 0)) == (0, 0) and layer.position((31, 31)) == (15, 15)
    assert layer.position((10, 21)) == (5, 10)
    left, right, bottom, top = layer.window_extent((10, 20))  # centre input pixel (10, 20)
    assert (left, right, bottom, top) == (18.5, 21.5, 11.5, 8.5)
    coarse = analysis.LayerKernels(
        "c", torch.zeros(1, 1, 3, 3, 4, 4), (8, 8), (32, 32), stride=2, dilation=1
    )
    assert coarse.position((31, 0)) == (3, 0)
    assert coarse.window_extent((0, 0)) == (
        -4.5,
        7.5,
        7.5,
        -4.5,
    )  # 3 input pixels of 4 image pixels


def test_kernel_variation() -> None:
    base = torch.randn(1, 1, 3, 3, 1, 1)
    constant = base.expand(2, 4, 3, 3, 5, 5)
    variation = analysis.kernel_variation(constant)
    assert variation.across_space == pytest.approx(
        0, abs=1e-6
    ) and variation.across_groups == pytest.approx(0, abs=1e-6)
    assert variation.spatial_map.shape == (2, 5, 5)
    varied = analysis.kernel_variation(torch.randn(2, 4, 3, 3, 5, 5))
    assert varied.across_space > 0.5 and varied.across_groups > 0.5


def test_images_filters_and_tables(checkpoints) -> None:
    model = analysis.load_involution_model(checkpoints.involution)
    images, labels = analysis.sample_images(model, count=3)  # no run directory: the digits
    assert images.shape == (3, 1, 32, 32) and labels.shape == (3,)
    assert analysis.predict(model, images).shape == (3,)
    pixels = analysis.choose_pixels(images[0])
    assert len(set(pixels)) == 3 and all(0 <= r < 32 and 0 <= c < 32 for r, c in pixels)
    conv = analysis.load_convolution_model(checkpoints.convolution)
    filters = analysis.conv_filters(conv)
    assert list(filters) == ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    assert filters["layer2.0.conv2"].shape == (8, 8, 3, 3)
    table = analysis.variation_table(analysis.capture_kernels(model, images), conv)
    assert (table["convolution across space"] == 0).all() and (
        table["convolution across channels"] > 0
    ).all()
    assert (table["involution across space"] > 0).all()


# ---------------------------------------------------------------------------------------------
# figures


def assert_png(path: Path) -> None:
    pixels = imread(path)
    assert float(np.std(pixels[..., :3])) > 0.01, f"{path} is blank"


def test_sweep_figures(fake_multirun: Path, tmp_path: Path) -> None:
    table = analysis.load_sweep(fake_multirun)
    fig = analysis.plot_accuracy_vs_kernel(table)
    assert len(fig.axes[0].lines) == 2  # one line per reduction ratio
    figures = {
        "kernel": fig,
        "cost": analysis.plot_accuracy_vs_cost(table),
        "curves": analysis.plot_training_curves(analysis.training_curves(table)),
    }
    for name, figure in figures.items():
        assert_png(analysis.save_figure(figure, tmp_path, name))
    failed = table.assign(best_val_top1=math.nan)
    with pytest.raises(AnalysisError):
        analysis.plot_accuracy_vs_kernel(failed)


def test_operator_sweep_figures(tmp_path: Path) -> None:
    """A sweep over operators: convolution jobs have no reduction ratio; they get their own line."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": ["operator=involution,convolution"]}}})
    )
    write_job(
        root,
        0,
        ["operator=involution"],
        [0.5, 0.7],
        {"name": "involution", "kernel_size": 7, "reduction_ratio": 4},
    )
    write_job(
        root, 1, ["operator=convolution"], [0.6, 0.65], {"name": "convolution", "kernel_size": 3}
    )
    table = analysis.load_sweep(root)
    assert table["operator"].tolist() == ["involution", "convolution"]
    fig = analysis.plot_accuracy_vs_kernel(table)
    assert sorted(line.get_label() for line in fig.axes[0].lines) == [
        "convolution",
        "reduction_ratio=4",
    ]
    cost = analysis.plot_accuracy_vs_cost(table)
    assert sorted(t.get_text() for t in cost.axes[0].get_legend().get_texts()) == [
        "convolution",
        "involution",
    ]
    for name, figure in {"kernel": fig, "cost": cost}.items():
        assert_png(analysis.save_figure(figure, tmp_path, name))


def test_kernel_and_cost_figures(checkpoints, tmp_path: Path) -> None:
    model = analysis.load_involution_model(checkpoints.involution)
    images, _ = analysis.sample_images(model, count=2)
    captures = analysis.capture_kernels(model, images)
    conv = analysis.load_convolution_model(checkpoints.convolution)
    costs = pd.DataFrame(
        {
            "family": ["a", "a", "b", "b"],
            "operator": ["x", "x", "y", "y"],
            "depth": [26, 50, 26, 50],
            "params_m": [1, 2, 3, 4],
            "macs_g": [1, 2, 2, 3],
        }
    )
    figures = {
        "overlays": analysis.plot_kernel_overlays(
            images[0], captures, analysis.choose_pixels(images[0])
        ),
        "variation": analysis.plot_variation_maps(images[0], captures),
        "filters": analysis.plot_conv_filters(analysis.conv_filters(conv)),
        "costs": analysis.plot_costs(costs),
        "ops": analysis.plot_spatial_op_costs(analysis.spatial_op_costs(32, 8)),
    }
    for name, figure in figures.items():
        assert_png(analysis.save_figure(figure, tmp_path, name))


# ---------------------------------------------------------------------------------------------
# notebook hygiene tool


def test_strip_clears_outputs(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.execution_count = 1
    cell.outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    ]
    notebook.cells.append(cell)
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook, path)
    assert nbtools.main([str(path)]) == 1
    assert nbtools.strip(path) and not nbtools.strip(path)
    assert nbtools.has_outputs(nbformat.read(path, as_version=4)) == []
    assert json.loads(path.read_text())["cells"][0]["outputs"] == []


def test_execute_runs_each_notebook_headless_and_names_the_one_that_stops(
    tmp_path: Path, capsys
) -> None:
    """``make notebooks``: each notebook runs in a kernel of this interpreter from its own folder;
    the executed copy goes to --out, the notebook itself keeps no outputs; a notebook that stops
    is one line naming it and its error, the others still run, exit status 1."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    good = nbformat.v4.new_notebook()
    good.cells.append(
        nbformat.v4.new_code_cell(
            "import os, sys\nprint(sys.executable, os.getcwd(), os.environ['MPLBACKEND'])"
        )
    )
    bad = nbformat.v4.new_notebook()
    bad.cells.append(nbformat.v4.new_code_cell("raise ValueError('set CHECKPOINT')"))
    nbformat.write(bad, folder / "01_bad.ipynb")
    nbformat.write(good, folder / "02_good.ipynb")
    out = tmp_path / "executed"
    paths = [str(folder / "01_bad.ipynb"), str(folder / "02_good.ipynb")]
    assert nbtools.main(["--execute", "--out", str(out), *paths]) == 1
    printed = capsys.readouterr()
    assert "01_bad.ipynb: ValueError: set CHECKPOINT" in printed.err
    assert "02_good.ipynb" in printed.out and str(out / "02_good.ipynb") in printed.out
    executed = nbformat.read(out / "02_good.ipynb", as_version=4).cells[0].outputs[0]["text"]
    assert executed.split() == [sys.executable, str(folder.resolve()), "Agg"]
    assert nbtools.has_outputs(nbformat.read(folder / "02_good.ipynb", as_version=4)) == []
    assert (out / "01_bad.ipynb").is_file()  # executed up to the cell that stopped
