"""involution.runs.wandb_mode: W&B online only with a key and a reachable host, offline
otherwise; the environment's WANDB_MODE wins; a bad mode names the key."""

from __future__ import annotations

import pytest

from involution.runs import wandb_mode
from involution.runs.wandb_mode import resolve_wandb_mode


def test_auto_mode_is_offline_without_a_key(no_wandb_env) -> None:
    assert resolve_wandb_mode("auto") == "offline"


def test_auto_mode_is_online_with_a_key_and_a_reachable_host(no_wandb_env) -> None:
    no_wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    no_wandb_env.setattr(wandb_mode, "wandb_host_reachable", lambda timeout=3.0: True)
    assert resolve_wandb_mode("auto") == "online"
    no_wandb_env.setattr(wandb_mode, "wandb_host_reachable", lambda timeout=3.0: False)
    assert resolve_wandb_mode("auto") == "offline"  # never hangs on a dead network


def test_environment_mode_wins_and_bad_modes_name_the_key(no_wandb_env) -> None:
    no_wandb_env.setenv("WANDB_MODE", "dryrun")  # Lightning's name for offline
    assert resolve_wandb_mode("online") == "offline"
    no_wandb_env.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match=r"^logger.wandb.mode must be one of .*'sometimes'$"):
        resolve_wandb_mode("auto")
