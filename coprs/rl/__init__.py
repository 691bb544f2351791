"""Pure RL math (advantages, clipped policy loss, KL estimators)."""
