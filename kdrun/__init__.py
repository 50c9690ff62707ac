"""kdrun: run, sweep and reproduce knowledge-distillation experiments from the shell."""

__version__ = "0.1.0"
