"""Rewards for GRPO (REWARDS registry)."""
