"""OmegaConf resolvers and override quoting shared by every entry point (registered once, never at import)."""

from __future__ import annotations

import os
import secrets


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
