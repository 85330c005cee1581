"""``make bench-detection`` (``involution.bench.detection``): ratios to the convolution-neck twin
and to torchvision, the targets, records -> section round trip; one real measurement, small."""

from __future__ import annotations

import json

import pytest
import torch

from involution.bench import detection as bench
from involution.bench.sections import read_sections


def _run(model, train, infer, peak, **extra):
    return {
        "model": model,
        "batch": 2,
        "mode": "eager",
        "amp": None,
        "train_s": train,
        "infer_s": infer,
        "peak_bytes": peak,
        "first_train_step_s": 1.0,
        **extra,
    }


RESULTS = [
    _run("rednet50_fasterrcnn_conv", [2.0, 2.2], [1.0], 1000),
    _run("rednet50_fasterrcnn_conv", [1.8, 1.9], [1.1], 1200),
    _run("rednet50_fasterrcnn_inv", [1.7, 1.8], [1.2], 900),
    _run("tv_resnet50_fasterrcnn", [3.5], [1.5], 1500),
    _run("rednet50_semantic_fpn_inv", [1.0], [0.5], 100, error="RuntimeError: boom | x"),
]


def test_rows_carry_ratios_to_the_twin_and_to_torchvision():
    rows = {r["model"]: r for r in bench.aggregate(RESULTS)}
    conv, inv = rows["rednet50_fasterrcnn_conv"], rows["rednet50_fasterrcnn_inv"]
    assert conv["train_s"] == pytest.approx(1.85)  # the faster process's median
    assert inv["train_s_twin_ratio"] == pytest.approx(1.75 / 1.85)
    assert inv["infer_s_twin_ratio"] == pytest.approx(1.2 / 1.0)
    assert inv["peak_bytes_twin_ratio"] == pytest.approx(900 / 1100)
    assert inv["train_s_tv_ratio"] == pytest.approx(1.75 / 3.5)
    assert conv["train_s_twin_ratio"] is None  # a convolution neck has no twin
    assert bench.targets(list(rows.values())) == [
        "- rednet50_fasterrcnn_inv vs rednet50_fasterrcnn_conv: train 0.95x (met), "
        "infer 1.20x (MISSED), peak 0.82x (met)"
    ]


def test_records_render_the_section_and_rerender_from_json(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "counts", lambda model, size: {"params": 41_000_000, "macs": 9e10})
    runs = iter(RESULTS[:4])
    monkeypatch.setattr(bench, "run_worker", lambda spec, timeout: {**spec, **next(runs)})
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    models = ["rednet50_fasterrcnn_conv", "rednet50_fasterrcnn_inv", "tv_resnet50_fasterrcnn"]
    bench.main(["--models", *models, "--processes", "1", "--output", str(out)])
    records = json.loads((tmp_path / "benchmarks.detection.json").read_text())
    assert records["meta"]["image_size"] == 512 and records["meta"]["batch"] == 2
    assert "environment" in records["meta"]
    assert len(records["runs"]) == 3
    found = read_sections(out.read_text())
    assert found["other"] == "kept\n"
    section = found[bench.SECTION]
    assert "| rednet50_fasterrcnn_inv | fasterrcnn | rednet50 | involution | 41.00 | 90.0 |" in (
        section
    )
    assert "- rednet50_fasterrcnn_inv vs rednet50_fasterrcnn_conv: train" in section
    out.write_text("# Benchmarks\n")
    bench.main(["--render", "--output", str(out)])
    assert read_sections(out.read_text())[bench.SECTION] == section


def test_twins_and_yardsticks():
    assert bench.twin("rednet50_maskrcnn_inv") == "rednet50_maskrcnn_conv"
    assert bench.twin("tv_resnet50_maskrcnn") is None
    assert bench.yardstick("rednet50_semantic_fpn_inv") == "tv_resnet50_semantic_fpn"
    assert set(bench.MODELS) >= {bench.yardstick(m) for m in bench.MODELS}


def test_one_measurement_on_small_images():
    result = bench.measure(
        {
            "model": "rednet50_semantic_fpn_inv",
            "batch": 1,
            "image_size": 64,
            "reps": 1,
            "warmup": 0,
            "device": "cpu",
        }
    )
    assert len(result["train_s"]) == 1 and result["train_s"][0] > 0
    assert result["infer_s"][0] > 0 and "error" not in result


def test_semantic_fpn_yardstick_is_torchvisions_resnet50_fpn():
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    segmenter = bench.build("tv_resnet50_semantic_fpn", 64)
    assert isinstance(segmenter.backbone, BackboneWithFPN)
    assert segmenter.backbone.fpn.extra_blocks is None  # mmseg's FPN: four levels
    with torch.no_grad():
        assert segmenter.eval()(torch.rand(1, 3, 64, 64))["out"].shape == (1, 19, 64, 64)
