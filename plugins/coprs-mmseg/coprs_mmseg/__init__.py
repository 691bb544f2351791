"""coprs-mmseg: mmsegmentation backbones as coprs vision backbones (``type='MMSegBackbone'``).

Needs mmsegmentation 1.x with an mmcv built with its compiled ops; without them the plugin says
so when coprs loads it, and coprs works without it.
"""

from .backbone import MMSegBackbone, mmseg_unavailable

__version__ = "0.1.0"
__all__ = ["MMSegBackbone", "mmseg_unavailable", "__version__"]
