"""involution.rules: one table per constructor; the constructor and the run's pre-flight check
read the same rule and say the same line."""

from __future__ import annotations

import pytest

from involution import rules
from involution.data import DigitsDataModule
from involution.layers import Involution2d, LocalSelfAttention2d
from involution.models import create_model
from involution.runner.preflight import SetupError, check_config
from involution.tasks import ImageClassifier

from conftest import TINY_MODEL


def test_check_names_the_first_broken_key_in_the_tables_order() -> None:
    table = {"a": rules.int_at_least(1), "b": rules.POSITIVE_NUMBER, "c": rules.FRACTION}
    rules.check({"b": 0.5, "c": 0.0}, table, "group")  # absent keys are not checked
    with pytest.raises(ValueError, match=r"^group\.a must be an int >= 1, got True$"):
        rules.check({"c": 1.0, "a": True}, table, "group")  # a bool is no int
    with pytest.raises(ValueError, match=r"^c must be a number in \[0, 1\), got nan$"):
        rules.check({"c": float("nan")}, table, "")


@pytest.mark.parametrize(
    ("override", "construct"),
    [
        ("operator.kernel_size=4", lambda: Involution2d(16, kernel_size=4)),
        ("operator.dilation=0", lambda: LocalSelfAttention2d(16, heads=2, dilation=0)),
        ("model.base_width=0", lambda: create_model(**{**TINY_MODEL, "base_width": 0})),
        ("data.batch_size=0", lambda: DigitsDataModule(batch_size=0)),
        ("module.lr=0", lambda: ImageClassifier(TINY_MODEL, lr=0)),
        ("module.label_smoothing=1.0", lambda: ImageClassifier(TINY_MODEL, label_smoothing=1.0)),
    ],
)
def test_the_constructor_and_the_preflight_say_the_same_line(
    compose_train, override: str, construct
) -> None:
    with pytest.raises(SetupError) as found_early:
        check_config(compose_train([override]))
    with pytest.raises(ValueError) as found_by_constructor:
        construct()
    assert str(found_early.value) == str(found_by_constructor.value)
    assert str(found_early.value).startswith(f"{override.partition('=')[0]} must be ")
