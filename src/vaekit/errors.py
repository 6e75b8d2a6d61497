"""The exceptions vaekit raises on bad input. Each message names the file, key, shape or value at fault."""


class VaekitError(Exception):
    """Base class: an error the user can act on (the CLI prints its message without a traceback)."""


class ConfigError(VaekitError, ValueError):
    """A config key, value or file is invalid."""


class DataError(VaekitError, ValueError):
    """A dataset is missing, corrupt, or does not fit the model."""


class CheckpointError(VaekitError, ValueError):
    """A checkpoint directory is missing, incomplete, tampered with or unsafe."""


class TrainingError(VaekitError, RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""
