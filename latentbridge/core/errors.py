"""One exception type for bad input: every command prints it as a single line (``latentbridge.cli.run_cli``)."""


class LatentBridgeError(Exception):
    """A user-facing error. The message names the file or the config key at fault."""


class ConfigError(LatentBridgeError):
    """A config value is wrong (unknown name, impossible combination)."""


class DataError(LatentBridgeError):
    """A dataset path or file is missing, empty or unreadable."""


class CheckpointError(LatentBridgeError):
    """A checkpoint is missing, corrupt or of another architecture."""
