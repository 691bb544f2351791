"""The coprs entry point of coprs-mmseg.

Without mmseg's models (mmsegmentation needs an mmcv with compiled ops) the hook raises, so the
plugin loader reports the reason as a warning naming this plugin and coprs goes on without it.
"""

from coprs.plugins import hookimpl


@hookimpl
def register_vision_backbones(register):
    from .backbone import INSTALL_HINT, MMSegBackbone, mmseg_unavailable

    reason = mmseg_unavailable()
    if reason is not None:
        raise ImportError(f"mmseg.models cannot be imported ({reason}); {INSTALL_HINT}")
    register(MMSegBackbone)
