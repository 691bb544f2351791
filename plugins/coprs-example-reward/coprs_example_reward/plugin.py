"""The coprs entry point of coprs-example-reward: one reward and one config directory."""

from pathlib import Path

from coprs.plugins import hookimpl


@hookimpl
def register_rewards(register):
    from .boundary import BoundaryFScoreReward

    register(BoundaryFScoreReward)


@hookimpl
def config_dirs():
    return Path(__file__).parent / "configs"
