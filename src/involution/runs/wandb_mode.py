"""Whether a run logs to W&B online or offline: online when W&B has a key and its host answers,
offline otherwise, never hanging on a dead network. Read by the W&B logger and the sweep
dashboard alike."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """True when W&B has a key: WANDB_API_KEY, or a ~/.netrc entry for the W&B host
    (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_host_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the W&B host: seconds at most, so a dead network never stalls a run."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> online if a key is configured and the host answers, else offline.

    An explicit ``WANDB_MODE`` in the environment wins over the config, as in wandb itself.
    """
    mode = os.environ.get("WANDB_MODE", mode)
    # Lightning's WandbLogger sets WANDB_MODE=dryrun (wandb's old name for offline) when offline.
    mode = "offline" if mode == "dryrun" else mode
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
    if mode == "auto":
        mode = "online" if wandb_api_key_configured() else "offline"
    if mode == "online" and not wandb_host_reachable():
        log.warning("W&B host unreachable: logging offline (sync later with `wandb sync`)")
        mode = "offline"
    return mode
