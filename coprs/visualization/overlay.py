"""Pictures of a result: heatmap and mask overlays, and the CoT | heatmap | mask panel."""

from __future__ import annotations

import contextlib
import functools
import re
import textwrap
import warnings

import numpy as np

__all__ = ["heatmap_overlay", "mask_overlay", "make_panel", "render_panel", "make_sample_panel",
           "save_png"]


#: installed fonts with CJK glyphs that text falls back to, in this order, after matplotlib's
#: default (DejaVu, which has none); none is downloaded
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR",
              "Source Han Sans SC", "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
              "Droid Sans Fallback", "Microsoft YaHei", "SimHei", "PingFang SC",
              "Hiragino Sans GB", "Arial Unicode MS", "IPAGothic", "Malgun Gothic")
_GLYPH_MISSING = re.compile(r"Glyph (\d+) .*missing from font")
_missing_reported = False


@functools.cache
def _installed_cjk_fonts() -> tuple[str, ...]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(name for name in _CJK_FONTS if name in installed)


def _families(generic: str) -> list[str]:
    """``generic`` (``'sans-serif'``, ``'monospace'``), then every installed :data:`_CJK_FONTS`
    font: matplotlib draws each character with the first family that has it."""
    return [generic, *_installed_cjk_fonts()]


@contextlib.contextmanager
def _missing_glyphs_noted_once():
    """Draw with matplotlib's "Glyph ... missing from font" warnings (one per character per
    panel) folded into one warning per process that says which font to install."""
    global _missing_reported
    missing: set[int] = set()
    with warnings.catch_warnings():
        show = warnings.showwarning

        def collect(message, category, *args, **kwargs):
            found = _GLYPH_MISSING.search(str(message))
            if found:
                missing.add(int(found.group(1)))
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = collect
        warnings.filterwarnings("always", message=_GLYPH_MISSING.pattern)
        yield
    if missing and not _missing_reported:
        _missing_reported = True
        shown = ", ".join(f"{chr(c)!r} (U+{c:04X})" for c in sorted(missing)[:5])
        warnings.warn(
            f"no installed font has the glyphs of {shown}{' ...' if len(missing) > 5 else ''}: "
            "panels draw them as empty boxes (noted once). For CJK text install a font such as "
            "Noto Sans CJK (e.g. apt install fonts-noto-cjk); panels use it when it is there",
            UserWarning, stacklevel=3)


def _colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.clip(values, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5,
                    cmap: str = "jet") -> np.ndarray:
    """Blend an H x W heatmap in [0, 1] (colour-mapped) over an H x W x 3 uint8 image."""
    color = _colormap(heatmap, cmap).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * color
    return out.clip(0, 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.55
                 ) -> np.ndarray:
    """Tint the pixels of an H x W bool mask on an H x W x 3 uint8 image."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path) -> None:
    """Write a uint8 (H x W or H x W x 3) or bool array as PNG (bool → 0/255)."""
    from PIL import Image

    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, format="PNG")


def make_panel(image: np.ndarray, instruction: str, heatmap: np.ndarray, mask: np.ndarray,
               response: str, path, format_ok: bool | None = None, wrap: int = 48) -> None:
    """Write the paper's Figure-5 style panel: image + instruction | heatmap | mask | response."""
    fig = _panel_figure(image, instruction, heatmap, mask, response, format_ok, wrap)
    with _missing_glyphs_noted_once():
        fig.savefig(path, format="png")


def render_panel(image: np.ndarray, instruction: str, heatmap: np.ndarray, mask: np.ndarray,
                 response: str, format_ok: bool | None = None, wrap: int = 48) -> np.ndarray:
    """:func:`make_panel`'s picture as an H x W x 3 uint8 array (for a visualizer backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _panel_figure(image, instruction, heatmap, mask, response, format_ok, wrap)
    canvas = FigureCanvasAgg(fig)
    with _missing_glyphs_noted_once():
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _printable(text: str) -> str:
    """Control characters (which a random-initialised policy can write, and which no font draws)
    as ``\\x..`` escapes; line breaks are kept."""
    return "".join(c if c.isprintable() or c == "\n" else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


def _panel_figure(image, instruction, heatmap, mask, response, format_ok, wrap):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.4), dpi=100)
    axes = fig.subplots(1, 4)
    axes[0].imshow(image)
    axes[0].set_title("\n".join(textwrap.wrap(_printable(instruction or "(empty instruction)"),
                                             40)), fontsize=9, family=_families("sans-serif"))
    axes[1].imshow(heatmap_overlay(image, heatmap))
    # the peak, so that a faint prior (all values near 0, a flat blue overlay) reads as such
    axes[1].set_title(f"positional prior (heatmap), peak {float(np.max(heatmap)):.2g}",
                      fontsize=9)
    axes[2].imshow(mask_overlay(image, mask))
    axes[2].set_title("mask", fontsize=9)
    text = "\n".join(textwrap.fill(p, wrap)
                     for p in _printable(response or "(empty)").splitlines() or [""])
    if format_ok is not None:
        text = f"[format {'ok' if format_ok else 'NOT ok'}]\n" + text
    axes[3].text(0.0, 1.0, text[:2500], va="top", ha="left", fontsize=8,
                 family=_families("monospace"), wrap=True)
    axes[3].set_title("response", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, top=0.85, bottom=0.02, wspace=0.05)
    return fig


def make_sample_panel(image: np.ndarray, mask: np.ndarray, instruction: str, path,
                      ignore: np.ndarray | None = None, text: str = "",
                      bbox=None, points=None, wrap: int = 50) -> None:
    """Write what a dataset sample holds: the image | its target mask (red; the ignored region
    grey; the box and points when the sample has them) | the instruction and ``text`` (e.g.
    the gold reasoning)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    shown = image if ignore is None else mask_overlay(image, ignore & ~mask, (128, 128, 128))
    fig = Figure(figsize=(12, 4.4), dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title(f"image {image.shape[1]} x {image.shape[0]}", fontsize=9)
    axes[1].imshow(mask_overlay(shown, mask))
    title = f"target mask ({int(mask.sum())} px)"
    if bbox is not None:
        x0, y0, x1, y1 = (float(v) for v in bbox)
        axes[1].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow",
                                    linewidth=1.2))
        title += ", box"
    if points is not None and len(points):
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        axes[1].scatter(pts[:, 0], pts[:, 1], s=18, c="cyan", marker="x")
        title += ", points"
    if ignore is not None:
        title += "; ignored: grey"
    axes[1].set_title(title, fontsize=9)
    body = [textwrap.fill(instruction or "(empty instruction)", wrap), ""]
    body += [textwrap.fill(p, wrap) for p in text.splitlines() if p.strip()]
    axes[2].text(0.0, 1.0, "\n".join(body)[:2500], va="top", ha="left", fontsize=8,
                 family=_families("monospace"))
    axes[2].set_title("instruction", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.05)
    with _missing_glyphs_noted_once():
        fig.savefig(path, format="png")
