"""bpexp: a research harness for backpropagation experiments."""

__version__ = "0.1.0"


def run(overrides: list[str] | None = None, *, echo: bool = False, listeners=None):
    """Compose ``conf/`` with ``overrides`` (as on the command line), train, return a Result.

    ``bpexp.run(["optimizer=nesterov", "tracking.enabled=false"])`` returns the final metrics,
    the per-epoch history as a pandas DataFrame and the final weights.
    """
    from bpexp.app import run as _run  # imported lazily: `import bpexp` stays light

    return _run(overrides, echo=echo, listeners=listeners)
