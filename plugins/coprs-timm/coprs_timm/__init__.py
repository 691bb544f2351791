"""coprs-timm: timm image models as coprs vision backbones (``type='TimmBackbone'``).

Registered through the ``coprs`` entry point (:mod:`coprs_timm.plugin`); importing this package
registers nothing by itself.
"""

from .backbone import TimmBackbone

__version__ = "0.1.0"
__all__ = ["TimmBackbone", "__version__"]
