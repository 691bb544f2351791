"""The result panel: what it draws, and text no font can draw."""

import warnings

import numpy as np

from coprs.visualization import render_panel
from coprs.visualization.overlay import _printable


def test_control_characters_are_escaped_and_the_rest_kept():
    assert _printable("a\x01b\x1b\n\x7fc\u200bé") == "a\\x01b\\x1b\n\\x7fc\\u200bé"


def test_panel_of_a_response_with_control_characters_draws_without_missing_glyphs():
    image = np.full((32, 48, 3), 200, np.uint8)
    heat = np.zeros((32, 48), np.float32)
    heat[8:16, 8:24] = 1.0
    mask = heat > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of each glyph it cannot draw
        panel = render_panel(image, "find \x1bit", heat, mask, "<think>a\x01b\x7f</think>",
                             format_ok=True)
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[1] > 3 * panel.shape[0]
    # the mask column is tinted red where the mask is
    assert (panel[..., 0].astype(int) - panel[..., 2]).max() > 100
