"""The coprs entry point of coprs-timm (``[project.entry-points.coprs]``).

Kept light: timm is imported only when a ``TimmBackbone`` is built.
"""

from coprs.plugins import hookimpl


@hookimpl
def register_vision_backbones(register):
    from .backbone import TimmBackbone

    register(TimmBackbone)
