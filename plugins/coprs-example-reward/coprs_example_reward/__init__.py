"""coprs-example-reward: a worked example of a third-party coprs plugin.

It adds a boundary F-score reward (``type='BoundaryFScoreReward'`` in the REWARDS registry) and
a config directory (``coprs-example-reward::coprs_tiny_boundary-reward_shapes_cpu.py``). See
docs/plugins.md of coprs for the walk-through.
"""

from .boundary import BoundaryFScoreReward, boundary_fscore, boundary_map

__version__ = "0.1.0"
__all__ = ["BoundaryFScoreReward", "boundary_fscore", "boundary_map", "__version__"]
