"""The segeig web demo: Gradio wiring around :mod:`segeig.app.logic`.

``build_demo(seg)`` returns the :class:`gradio.Blocks` app, ``serve(demo)``
starts it with the robustness settings (queue with a concurrency limit, upload
size limit, localhost by default), ``build_error_demo(markdown)`` is the page
served when no model could be loaded. Event handlers live in
:mod:`segeig.app.handlers`, each wrapped by :func:`segeig.app.handlers.guard`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
from segeig.app import logic
from segeig.app.handlers import (
    DOWNLOAD_MAX_AGE_S,
    DemoHandlers,
    DownloadArea,
    guard,
    model_summary,
)

from segeig.predictor import Segmenter

logger = logging.getLogger(__name__)

TITLE = "segeig — unsupervised segmentation by neural eigenfunctions"
#: Largest value of the "number of segments" slider.
MAX_MERGE_SLIDER = 40
#: Requests waiting in the queue beyond the running ones; more are refused.
QUEUE_SIZE = 64

INTRO = (
    "Upload images (or pick an example) and press **Segment**. Each segment id means the "
    "same thing in every image: the model clustered image patches without any labels. "
    "Use *Number of segments* to merge similar segments from fine to coarse without "
    "retraining."
)
EIGEN_INTRO = (
    "The model's head outputs K **eigenfunctions** of a graph over image patches (patches "
    "are linked when their features or colours are alike). With a checkpoint that measured "
    "them, they are shown by decreasing eigenvalue λ (how strongly a function follows the "
    "graph, measured on the training images after training). After the softmax they act as "
    "soft segment indicators rather than a coarse-to-fine ladder. Red is positive, blue "
    "negative, each map scaled to its own maximum."
)


def build_demo(
    seg: Segmenter,
    *,
    examples: Sequence[str | Path] = (),
    max_side: int = 768,
    max_images: int = 8,
    how: str | None = None,
    download_root: str | Path | None = None,
) -> gr.Blocks:
    """The demo app for one segmenter.

    Args:
        seg: the model to serve.
        examples: example image files offered as thumbnails.
        max_side: uploads are downscaled so their longer side is at most this.
        max_images: images processed per request (more are ignored, with a notice).
        how: where the checkpoint came from, shown in the header (no paths).
        download_root: parent of the temporary download folder (default: the
            system temp dir).

    Returns:
        The unlaunched :class:`gradio.Blocks`; its ``segeig_downloads``
        attribute is the :class:`DownloadArea` to clean up after closing.
    """
    methods = logic.available_methods(seg)
    if not methods:
        raise ValueError("the checkpoint supports none of the demo's methods")
    # A labelled checkpoint opens on a method whose clusters have class names.
    default = next((m for m in methods if logic.has_classes(seg, m)), methods[0])
    downloads = DownloadArea(download_root)
    h = DemoHandlers(seg, max_side, max_images, downloads)
    max_segments = max(seg.num_segments(m) for m in methods)
    example_paths = [str(p) for p in examples]
    with gr.Blocks(title="segeig demo", analytics_enabled=False,
                   delete_cache=(600, DOWNLOAD_MAX_AGE_S)) as demo:
        gr.Markdown(f"# {TITLE}\n\n{INTRO}")
        gr.Markdown(model_summary(seg, how), elem_id="model-summary")
        state = gr.State(None, time_to_live=DOWNLOAD_MAX_AGE_S)
        # {method: {segment id: name}} typed by the user; outlives new "Segment" clicks.
        names = gr.State({}, time_to_live=DOWNLOAD_MAX_AGE_S)
        with gr.Tab("Segment", id="segment"), gr.Row():
            with gr.Column(scale=1, min_width=300):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                elem_id="upload")
                if example_paths:
                    example_gallery = gr.Gallery(
                        value=[(p, Path(p).stem) for p in example_paths],
                        label="…or pick an example", columns=4, height=130,
                        object_fit="cover", allow_preview=False, elem_id="examples")
                method = gr.Radio(methods, value=default, label="Method",
                                  info="eigen: argmax over eigenfunctions; eigen+kmeans: "
                                       "nearest k-means centroid of the head's features")
                crf = gr.Checkbox(True, label="CRF refinement",
                                  info="snaps boundaries to image edges (slower)")
                opacity = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay opacity")
                n_segments = gr.Slider(
                    0, min(MAX_MERGE_SLIDER, max_segments), value=0, step=1,
                    label="Number of segments",
                    info="merge similar segments (Ward clustering); 0 keeps all")
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                selector = gr.Dropdown(label="Image", choices=[], interactive=False)
                compare = gr.ImageSlider(label="Before / after (drag the handle)",
                                         format="png", elem_id="compare")
                gr.Markdown("**Legend**")
                legend = gr.HTML(elem_id="legend")
                gallery = gr.Gallery(label="All results", columns=4, format="png",
                                     height=240, fit_columns=False, elem_id="results")
                download = gr.File(label="Downloads: label maps (palette PNG, pixel = "
                                         "segment id, or class index with classes.txt) "
                                         "and overlays",
                                   file_count="multiple", elem_id="downloads")
        with gr.Tab("Eigenfunctions", id="eigen") as eigen_tab:
            gr.Markdown(EIGEN_INTRO)
            k = seg.num_eigenfunctions or 2
            n_eigen = gr.Slider(1, max(2, min(32, k)), value=min(8, k), step=1,
                                label="Eigenfunctions shown")
            eigen_note = gr.Markdown()
            # No label: it would cover the first tile's title.
            eigen_grid = gr.Image(show_label=False, format="png", elem_id="eigen-grid")
            gr.Markdown("### Explain a segment\nClick a segment in the left image, or choose "
                        "one from the list.")
            with gr.Row():
                clickable = gr.Image(label="Click a segment", format="png", interactive=False,
                                     height=360, elem_id="clickable")
                mask = gr.Image(label="Selected segment", format="png", interactive=False,
                                height=360, elem_id="mask")
            segment_choice = gr.Dropdown(label="Segment", choices=[], elem_id="segment-choice")
            explanation = gr.Markdown(elem_id="explanation")
            gr.Markdown("### Name a segment\nType what the selected segment shows; the names "
                        "file is what `segeig label --names` reads to give the checkpoint "
                        "class names.")
            with gr.Row():
                name_box = gr.Textbox(label="Name", placeholder="e.g. sky", max_length=100,
                                      elem_id="segment-name", scale=3)
                name_button = gr.Button("Save name", elem_id="save-name", scale=1)
            names_file = gr.File(label="Names file", elem_id="names-file", interactive=False)
            names_note = gr.Markdown(elem_id="names-note")

        view_outputs = [summary, compare, legend, gallery, download, clickable,
                        segment_choice, mask, explanation]
        # Progress (and, on failure, gradio's error badge) is drawn on one
        # component per event, so earlier results stay readable under the toast.
        private = dict(api_visibility="private")
        eigen_event = dict(fn=guard(h.eigen), inputs=[state, selector, n_eigen],
                           outputs=[eigen_grid, eigen_note], concurrency_id="model",
                           show_progress_on=[eigen_grid], **private)
        seg_event = dict(fn=guard(h.segment), inputs=[files, method, crf, opacity, n_segments],
                         outputs=[state, selector, *view_outputs], concurrency_id="model",
                         show_progress_on=[compare])
        view_event = dict(fn=guard(h.view), inputs=[state, selector, opacity, n_segments],
                          outputs=view_outputs, show_progress="hidden", **private)
        run.click(**seg_event, api_name="segment").success(**eigen_event)
        if example_paths:
            def pick_example(evt: gr.SelectData) -> list[str]:
                return [example_paths[int(evt.index)]]

            example_gallery.select(pick_example, None, files, **private).then(
                **seg_event, **private).success(**eigen_event)
        for control in (opacity, n_segments):
            control.release(**view_event)
        selector.input(**view_event).then(**eigen_event)
        n_eigen.release(**eigen_event)
        eigen_tab.select(**eigen_event)
        segment_choice.input(guard(h.explain), [state, selector, n_segments, segment_choice],
                             [mask, explanation], show_progress_on=[mask], **private)
        clickable.select(guard(h.click), [state, selector, n_segments],
                         [segment_choice, mask, explanation], show_progress_on=[mask], **private)
        name_event = dict(fn=guard(h.name_segment),
                          inputs=[state, names, selector, n_segments, segment_choice, name_box],
                          outputs=[names, names_file, names_note], **private)
        name_button.click(**name_event)
        name_box.submit(**name_event)
    demo.segeig_downloads = downloads
    return demo


def build_error_demo(markdown: str) -> gr.Blocks:
    """A one-page app that only explains why the demo could not start."""
    with gr.Blocks(title="segeig demo — not available", analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(markdown, elem_id="startup-error")
    return demo


def serve(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    max_upload_mb: float = 20,
    concurrency: int = 2,
    share: bool = False,
    allowed_paths: Sequence[str | Path] = (),
    block: bool = True,
    quiet: bool = False,
) -> gr.Blocks:
    """Start the app: queue with ``concurrency`` model runs at once, upload limit, host/port.

    Args:
        demo: from :func:`build_demo` or :func:`build_error_demo`.
        host: interface to bind; ``127.0.0.1`` (default) is reachable from this
            machine only, ``0.0.0.0`` from the network (e.g. inside Docker).
        port: TCP port.
        max_upload_mb: larger uploads are refused by the server.
        concurrency: events of the same kind running at once (model runs
            share one limit); further requests wait in the queue.
        share: create a public gradio.live link (off by default).
        allowed_paths: extra folders the app may serve files from (examples).
        block: wait until the server stops (False: return once it runs).
        quiet: suppress gradio's start-up banner.

    Returns:
        ``demo`` (running).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if max_upload_mb <= 0:
        raise ValueError(f"max upload size must be positive, got {max_upload_mb} MB")
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_SIZE)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=int(max_upload_mb * 1024 * 1024),
        allowed_paths=[str(p) for p in allowed_paths],
        show_error=False,  # only our own gr.Error messages reach the browser
        prevent_thread_lock=not block,
        quiet=quiet,
        ssr_mode=False,
        footer_links=["api"],
        inbrowser=False,
    )
    return demo


def close(demo: gr.Blocks) -> None:
    """Stop a server started with ``block=False`` and remove its download folder."""
    demo.close()
    downloads = getattr(demo, "segeig_downloads", None)
    if downloads is not None:
        downloads.cleanup()


__all__ = ["build_demo", "build_error_demo", "close", "model_summary", "serve"]
