"""A web demo of a segmentor (gradio, ``pip install -e ".[demo]"``).

An image and an instruction go in; the response with its chain of thought, the positional prior
as a heatmap over the image and the mask come out, with ``panel.png``, ``mask.png`` and
``result.json`` to download. The response box is editable: *Segment with this reasoning*
teacher-forces the edited text, so one can change a step of the reasoning and watch the heatmap
and the mask follow it.

:func:`demo_segment` is the work behind both buttons and needs no gradio; :func:`build_demo`
wires it into a ``gradio.Blocks`` app and :func:`launch_demo` serves it on this machine only
(no share link, no analytics, no fonts from the web).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DemoOutput", "demo_segment", "build_demo", "launch_demo", "import_gradio",
           "sample_examples"]

#: what the interface says when gradio is missing
GRADIO_MISSING = ('the web demo needs gradio: pip install -e ".[demo]" (or pip install '
                  '"gradio>=6,<7")')


@dataclass
class DemoOutput:
    """What the demo shows for one request."""

    response: str
    cot: str
    status: str
    heatmap: np.ndarray  # H x W x 3 uint8: the positional prior blended over the image
    mask: np.ndarray  # H x W x 3 uint8: the mask tinted on the image
    files: list[str] = field(default_factory=list)  # panel.png, mask.png, result.json


def demo_segment(model, image, instruction: str | None, response: str | None = None,
                 max_new_tokens: int | None = None, out_root=None) -> DemoOutput:
    """Segment ``image`` for ``instruction`` (or teacher-force ``response``) and prepare what the
    demo shows.

    Args:
        model: a segmentor from :func:`~coprs.apis.init_segmentor`.
        image: a path, a PIL image or an H x W x 3 array; None is a ``ValueError``.
        instruction: the instruction; empty is a ``ValueError``.
        response: a response to teacher-force (an edited chain of thought); None or blank
            generates one.
        max_new_tokens: response budget (the policy's default when None).
        out_root: where each request's files go, one sub-folder per request (a new temporary
            folder when None).

    Returns:
        A :class:`DemoOutput`; a response without the special token is shown with
        ``format NOT ok`` in its status, not raised.
    """
    from ..image import load_image
    from ..visualization import heatmap_overlay, mask_overlay
    from .inference import segment
    from .outputs import write_result

    if image is None:
        raise ValueError("no image: upload one (or pick an example)")
    if instruction is None or not str(instruction).strip():
        raise ValueError("the instruction is empty: say what to segment")
    if response is not None and not response.strip():
        response = None
    arr = load_image(image)
    result = segment(model, arr, instruction, max_new_tokens=max_new_tokens, response=response)
    root = Path(out_root) if out_root is not None else Path(tempfile.mkdtemp(prefix="coprs_demo_"))
    out = root / uuid.uuid4().hex[:12]
    summary = write_result(out, arr, instruction, result)
    area = summary["mask_area"]
    share = 100.0 * area / max(1, arr.shape[0] * arr.shape[1])
    x, y = summary["heatmap_peak_xy"]
    status = (f"{'given' if response is not None else 'generated'} response · "
              f"format {'ok' if result.format_ok else 'NOT ok'} · "
              f"mask {area} px ({share:.1f}% of the image) · heatmap peak at (x={x}, y={y})")
    return DemoOutput(
        response=result.response, cot=result.cot, status=status,
        heatmap=heatmap_overlay(arr, result.heatmap), mask=mask_overlay(arr, result.mask),
        files=[str(out / name) for name in ("panel.png", "mask.png", "result.json")],
    )


def sample_examples() -> list[list[str]]:
    """The packaged sample image with its instruction, as gradio examples."""
    assets = Path(__file__).resolve().parents[1] / "assets"
    meta = json.loads((assets / "sample.json").read_text(encoding="utf-8"))
    return [[str(assets / meta["image"]), meta["instruction"]]]


def import_gradio():
    """Import gradio with its usage analytics off; a clear ``ImportError`` without it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(GRADIO_MISSING) from exc
    return gradio


def build_demo(model, title: str = "coprs: reasoning segmentation", description: str = "",
               examples: list[list[str]] | None = None, out_root=None,
               max_new_tokens: int | None = None):
    """A ``gradio.Blocks`` app around ``model``.

    Two API endpoints: ``/segment`` (image, instruction, max new tokens → response, chain of
    thought, status, heatmap, mask, files) generates the response; ``/resegment`` (image,
    instruction, response) teacher-forces the given one. Bad input (no image, an empty
    instruction, an unreadable file) is shown as an error message in the page.
    """
    gr = import_gradio()
    if out_root is None:
        out_root = tempfile.mkdtemp(prefix="coprs_demo_")
    default_budget = max_new_tokens if max_new_tokens is not None else int(
        getattr(getattr(model, "policy", None), "max_new_tokens", 256) or 256)

    def outputs(out: DemoOutput):
        return out.response, out.cot, out.status, out.heatmap, out.mask, out.files

    def generate(image, instruction, budget):
        try:
            return outputs(demo_segment(model, image, instruction, None,
                                        int(budget) if budget else None, out_root))
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise gr.Error(str(exc)) from exc

    def given(image, instruction, response):
        if response is None or not response.strip():
            raise gr.Error("the response box is empty: segment once, then edit the reasoning")
        try:
            return outputs(demo_segment(model, image, instruction, response, None, out_root))
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise gr.Error(str(exc)) from exc

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\n{description}".strip())
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", label="image", sources=["upload", "clipboard"])
                instruction = gr.Textbox(label="instruction", lines=2,
                                         placeholder="what should be segmented?")
                budget = gr.Slider(1, max(default_budget, 1), value=default_budget, step=1,
                                   label="max new tokens")
                run = gr.Button("Segment", variant="primary")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, instruction])
            with gr.Column():
                status = gr.Markdown(label="status")
                with gr.Row():
                    heatmap = gr.Image(label="positional prior (heatmap)", format="png",
                                       interactive=False)
                    mask = gr.Image(label="mask", format="png", interactive=False)
                response = gr.Textbox(label="response", lines=6, interactive=True,
                                      info="edit the reasoning, then segment with it")
                rerun = gr.Button("Segment with this reasoning")
                cot = gr.Textbox(label="chain of thought", lines=4, interactive=False)
                files = gr.File(label="panel.png, mask.png, result.json", file_count="multiple",
                                interactive=False)
        shown = [response, cot, status, heatmap, mask, files]
        run.click(generate, [image, instruction, budget], shown, api_name="segment")
        instruction.submit(generate, [image, instruction, budget], shown, api_name=False)
        rerun.click(given, [image, instruction, response], shown, api_name="resegment")
    return demo


def launch_demo(demo, server_name: str = "127.0.0.1", server_port: int | None = None,
                block: bool = True):
    """Serve ``demo`` (no share link, no server-side rendering, system fonts only).

    ``block=False`` returns at once (the server runs in a thread; ``demo.close()`` stops it).
    Returns ``(app, local_url, share_url)`` as ``gradio.Blocks.launch`` does.
    """
    gr = import_gradio()
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])
    # quiet: gradio's banner would advise share=True, which coprs never sets; the local URL is
    # printed here instead
    launched = demo.launch(server_name=server_name, server_port=server_port, share=False,
                           prevent_thread_lock=True, ssr_mode=False, theme=theme,
                           show_error=True, quiet=True)
    if block:
        print(f"* Running on local URL:  {launched[1]}", flush=True)
        demo.block_thread()
    return launched
