"""The error type for command-line input a user can fix (flag values, run directories, output paths)."""

__all__ = ["CLIError"]


class CLIError(ValueError):
    """Reported by ``rnnkit`` as one line ``rnnkit: error: <message>`` with exit status 2."""
