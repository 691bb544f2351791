"""Rollout engines (ROLLOUT_ENGINES registry)."""
