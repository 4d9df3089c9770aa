"""OmegaConf resolvers and override quoting shared by every entry point (registered once, never at import)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def conf_path() -> Path:
    """The Hydra config tree: ``$LATENTBRIDGE_CONF``, else ``conf/`` of the source tree this package runs from
    (the editable install of ``make install``)."""
    given = os.environ.get("LATENTBRIDGE_CONF")
    return Path(given) if given else Path(__file__).resolve().parents[2] / "conf"


def wandb_offline() -> bool:
    """Offline unless an API key is set or WANDB_MODE asks for online."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("online", "run"):
        return False
    return mode in ("offline", "dryrun", "disabled") or not os.environ.get("WANDB_API_KEY")


def register_resolvers() -> None:
    """``${lb_uid:}`` (a random run-dir suffix, fixed per config) and ``${lb_wandb_offline:}``. Idempotent."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("lb_uid"):
        OmegaConf.register_new_resolver("lb_uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("lb_wandb_offline"):
        OmegaConf.register_new_resolver("lb_wandb_offline", wandb_offline)


def hydra_quote(value: object) -> str:
    """A value as a quoted Hydra override string (paths may hold '=', ',' or brackets)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
