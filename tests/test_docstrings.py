"""The public API's docstrings: every function users import documents its arguments, result and
errors with an example, and the examples that can run here (no data set, no checkpoint file) run
and print what they say."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

PUBLIC = {
    "involution.ops": ["involution2d"],
    "involution.ops.window_dot": ["window_dot", "window_dot_key_grad"],
    "involution.layers": ["Involution2d", "LocalSelfAttention2d"],
    "involution.models.registry": ["create_model"],
    "involution.models.counting": ["count_macs"],
    "involution.models.checkpoint": ["load_checkpoint"],
    "involution.runs.summary": ["summarize", "load_summary"],
    "involution.analysis.costs": ["load_benchmarks"],
    "involution.bench.report": ["read_records"],
    "involution.data.scene_files": ["write_coco", "write_cityscapes"],
}


@pytest.mark.parametrize(
    "module, name", [(module, name) for module, names in PUBLIC.items() for name in names]
)
def test_public_docstring_has_args_returns_raises_and_an_example(module, name):
    doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
    for section in ("Args:", "Returns", "Raises:", "Example"):
        assert section in doc, f"{module}.{name}: no {section!r} section"


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_docstring_examples_run(module):
    result = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False
    )
    assert result.failed == 0, f"{module}: {result.failed} of {result.attempted} examples failed"
