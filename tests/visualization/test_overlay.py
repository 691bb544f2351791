"""The result panel: what it draws, and text no font can draw."""

import warnings

import numpy as np
import pytest

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


def _panels(tmp_path, text):
    from coprs.visualization.overlay import make_panel, make_sample_panel

    image = np.full((32, 48, 3), 200, np.uint8)
    heat = np.zeros((32, 48), np.float32)
    mask = heat > 0.5
    render_panel(image, text, heat, mask, text)
    make_panel(image, text, heat, mask, text, tmp_path / "panel.png")
    make_sample_panel(image, mask, text, tmp_path / "sample.png", text=text)


def test_cjk_text_gives_one_note_not_a_warning_per_glyph(tmp_path, monkeypatch):
    import coprs.visualization.overlay as overlay

    monkeypatch.setattr(overlay, "_missing_reported", False, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            _panels(tmp_path, "找到红色的方块")
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "Glyph" in m]
    if not overlay._installed_cjk_fonts():  # this machine has no CJK font: said once
        assert len(messages) == 1 and "'找' (U+627E)" in messages[0]
        assert "Noto Sans CJK" in messages[0]
    else:
        assert messages == []


def test_an_installed_cjk_font_is_used_as_fallback(tmp_path, monkeypatch):
    """Any font matplotlib finds that has the glyphs is used: here matplotlib's own Last Resort
    font (placeholder glyphs for every code point) stands in for an installed CJK font."""
    from matplotlib import font_manager

    import coprs.visualization.overlay as overlay

    stand_in = "Last Resort High-Efficiency"
    if stand_in not in {f.name for f in font_manager.fontManager.ttflist}:
        pytest.skip(f"matplotlib ships no {stand_in!r} font here")
    monkeypatch.setattr(overlay, "_CJK_FONTS", (stand_in,))
    overlay._installed_cjk_fonts.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _panels(tmp_path, "找到红色的方块")
    finally:
        overlay._installed_cjk_fonts.cache_clear()
