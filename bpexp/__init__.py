"""bpexp: a research harness for backpropagation experiments."""

__version__ = "0.1.0"
