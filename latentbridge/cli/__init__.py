"""Command-line entry points (console scripts ``latentbridge-*`` and the thin top-level scripts).

Every command runs its work through ``run_cli``: a user error (bad config, missing file, wrong checkpoint) is one
line on stderr and exit status 2, never a traceback. Resolvers are registered here, once, before Hydra composes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from latentbridge.core.errors import ConfigError, LatentBridgeError

T = TypeVar("T")


def conf_dir() -> Path:
    """The Hydra config tree: ``$LATENTBRIDGE_CONF``, else ``conf/`` of the source tree this package runs from
    (the editable install of ``make install``), so the console scripts work from any directory."""
    from latentbridge.core.config import conf_path

    path = conf_path()
    if not (path / "train.yaml").is_file():
        print(
            f"error: LATENTBRIDGE_CONF: no Hydra config tree at {path} (set it to a checkout's conf/)", file=sys.stderr
        )
        sys.exit(2)
    return path


def user_error(exc: BaseException) -> LatentBridgeError | None:
    """The LatentBridgeError behind ``exc`` (Hydra wraps errors raised inside instantiated targets), if any."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, LatentBridgeError):
            return seen
        if isinstance(seen, OmegaConfBaseException) and not isinstance(seen, InstantiationException):
            key = getattr(seen, "full_key", None)
            first = str(seen).splitlines()[0]
            return ConfigError(f"{key}: {first}" if key else first)
        seen = seen.__cause__ or seen.__context__
    return None


def run_cli(fn: Callable[..., T], *args: Any) -> T:
    """Run an entry point's work; a user error is one line on stderr and exit status 2."""
    try:
        return fn(*args)
    except Exception as e:
        err = user_error(e)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def hydra_command(config_name: str, work: Callable[[Any], T], flags: dict[str, str] | None = None) -> Callable[[], Any]:
    """A console-script ``main`` that composes ``conf/<config_name>.yaml`` from the command line and runs
    ``work(cfg)`` under ``run_cli``; returns what ``work`` returns (Hydra hands it to sweepers). ``flags``: plain
    command-line flags and the override each stands for (``--dry-run`` -> ``dry_run=true``)."""
    import hydra

    from latentbridge.core.config import register_resolvers

    def main() -> Any:
        register_resolvers()
        for flag, override in (flags or {}).items():
            if flag in sys.argv[1:]:
                sys.argv = [a if a != flag else override for a in sys.argv]

        @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)
        def task(cfg: Any) -> T:
            return run_cli(work, cfg)

        return task()

    return main
