"""Training/evaluation loops, hooks and optimiser pieces (LOOPS / HOOKS registries)."""

from .test_loop import REASONING_MODES, ReasonSegTestLoop

__all__ = ["ReasonSegTestLoop", "REASONING_MODES"]
