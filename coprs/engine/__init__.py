"""Training loops, hooks and optimiser pieces (LOOPS / HOOKS registries)."""
