"""User-facing errors: the CLI turns these into one line on stderr; exit code 2 for bad input, 1 for a run
that could not go on."""


class ConfigError(ValueError):
    """Bad input from the user (model name, sizes, paths, files). The message is one line."""


class RunFailure(RuntimeError):
    """A run could not go on (a non-finite loss, a checkpoint that cannot be written); its checkpoints are
    intact. The message is one line and names the last usable checkpoint; exit code 1."""
