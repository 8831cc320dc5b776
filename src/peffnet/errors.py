"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class ConfigError(ValueError):
    """Bad input from the user (model name, sizes, paths, files). The message is one line."""
