"""Overlays and panels (PNG outputs)."""

from .overlay import heatmap_overlay, make_panel, mask_overlay, render_panel, save_png

__all__ = ["heatmap_overlay", "mask_overlay", "make_panel", "render_panel", "save_png"]
