"""The page, in Gradio: drop an image, see it beside the 4x result, slide between bicubic
and the model, pick the model and engine, download the file ``srdeploy upscale`` writes.

Only this module imports Gradio. The upload is a File, not an Image component: Gradio's
Image decodes and re-encodes an upload before the app sees it, which would skip the pixel
cap's header check and change the bytes that reach the Upscaler.
"""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

import gradio as gr

from srdeploy.demo.choices import Choices
from srdeploy.demo.compare import KEEP_SECONDS, Comparison, Settings, compare
from srdeploy.demo.upscalers import Upscalers
from srdeploy.io import imaging
from srdeploy.io.formats import READ_FORMATS

CSS = """
#status .srd-error { color: var(--error-text-color); font-weight: 600; }
#status p { white-space: pre-line; margin: 0; }
"""


def build(choices: Choices, upscalers: Upscalers, settings: Settings, out_dir: Path, provider: str, precision: str) -> gr.Blocks:
    """The page for ``choices``; requests run through ``upscalers`` with ``settings`` (its
    format is the drop-down's first value) and write their files under ``out_dir``."""
    # delete_cache: Gradio's own copies of uploads and results go after KEEP_SECONDS too.
    with gr.Blocks(title="srdeploy demo", analytics_enabled=False, delete_cache=(KEEP_SECONDS // 6, KEEP_SECONDS)) as page:
        gr.Markdown(
            "## srdeploy: 4x face super-resolution\n"
            f"Drop an image ({', '.join(READ_FORMATS)}) to see it upscaled 4x beside the input; slide across the result "
            "to compare it with bicubic upscaling. The download is the file `srdeploy upscale` writes for it.  \n"
            f"This machine: {choices.machine}; engines installed: {', '.join(choices.providers[1:]) or 'none'}."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                upload = gr.File(label="Image", file_count="single", type="filepath", elem_id="upload", height=140)
                shown_input = gr.Image(label="Input", type="pil", format="png", image_mode=None, interactive=False, elem_id="input", height=260)
                with gr.Row():
                    model = gr.Dropdown(list(choices.models), value=choices.models[0], label="Model", elem_id="model")
                    fmt = gr.Dropdown(list(imaging.OUTPUT_CHOICES), value=settings.format, label="Output format", elem_id="format")
                with gr.Row():
                    engine = gr.Dropdown(list(choices.providers), value=provider, label="Engine (provider)", elem_id="provider")
                    arithmetic = gr.Dropdown(list(choices.precisions), value=precision, label="Precision", elem_id="precision")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="left: bicubic x4 | right: model x4", type="pil", format="png", image_mode=None, interactive=False,
                                        elem_id="compare", max_height=512)
                status = gr.HTML(_status("Drop an image on the left."), elem_id="status")
                download = gr.DownloadButton("Download", visible=False, elem_id="download")

        def run(path: str | None, model_name: str, provider_name: str, precision_name: str, format_name: str):
            if not path:
                return None, None, gr.update(value=None, visible=False), _status("Drop an image on the left.")
            outcome = compare(upscalers, Path(path), model_name, provider_name, precision_name, replace(settings, format=format_name), out_dir)
            if not isinstance(outcome, Comparison):
                return None, None, gr.update(value=None, visible=False), _status(outcome, error=True)
            return (
                outcome.input,
                gr.update(value=(outcome.bicubic, outcome.upscaled), label=f"left: bicubic x4 | right: {model_name} x4"),
                gr.update(value=str(outcome.file), label=f"Download {outcome.file.name}", visible=True),
                _status(outcome.summary),
            )

        gr.on(
            triggers=[upload.change, model.change, engine.change, arithmetic.change, fmt.change],
            fn=run, inputs=[upload, model, engine, arithmetic, fmt], outputs=[shown_input, slider, download, status],
        )
    return page


def _status(text: str, error: bool = False) -> str:
    return f'<p class="{"srd-error" if error else "srd-info"}">{html.escape(text)}</p>'
