"""The gradio page: the scan to click on, click controls, the raters' gallery, upload, and the raw mask.

Every action is also a named API endpoint (for gradio_client and scripts), taking clicks in model pixels:
    /load_sample ()  /upload (file)  /add_click (x, y, label)  /undo ()  /redo ()  /clear ()
    /suggest (rater)  /set_box (x0, y0, x1, y1)  /next_image ()  /new_session ()
each returning (view, caption, gallery, clicks, mask); /upload adds its message (empty when the upload was
taken). `rater` is the rater's number as a string, "0" to "3" for the bundled sample (the API page's type; an int
is taken too), `label` "positive" or "negative" (or 1, 0), coordinates numbers (rounded, clamped to the image).
The endpoints with values skip gradio's own checks (`preprocess=False`): the session checks every value, and a
refused one is answered with one message naming it (gr.Error, no traceback on the server).

Clicking on the view does what /add_click does, at the model pixel under the pointer; in "box corner" mode two
clicks on opposite corners set the box (MedSAM's native prompt), which stays in every round's prompt.

A session is a series of images: /next_image moves to the next bundled image, and a model with a session memory
(`-memory style`) carries the style of the prediction the user ended with; /new_session forgets it (the current
image, no clicks); /load_sample starts over on the first image with a new session. An upload continues the session.

Uploads arrive as a file path (gr.File), not as gradio's decoded image: `session.read_upload` checks the size
in bytes and the header's pixel count before anything is decoded, and refuses a file that is not an image; a
refusal is a line in the page and leaves the session as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from utils import InputError

from . import session as sess
from .predictor import Predictor
from .sample import Sample

HELP = """## AESPA: click, and the prediction moves toward the rater you agree with
Click on the scan: **positive** clicks mark what belongs to the lesion, **negative** ones what does not.
The prediction (red) is recomputed after every click. For the bundled sample, the gallery compares it with
each rater (yellow: both, cyan: rater only, red: prediction only); **Suggest next click** makes the click
a user following the chosen rater would make. A **box** (choose "box corner", then click two opposite corners)
is MedSAM's own prompt: it stays in the prompt while you click. **Next image** goes on with the series: a model
with a session memory remembers whose style you followed and starts the next image from it (**New session**
forgets). Upload your own image below (no raters then)."""


def build_app(predictor: Predictor, samples: Sample | list[Sample]) -> gr.Blocks:
    """The Blocks app on the bundled sample (or a series of them, demo.sample.load_series); nothing is launched."""
    size = predictor.size
    series = samples if isinstance(samples, list) else [samples]
    start = sess.series_session(series, 0, size)
    first = sess.render(predictor, start)

    def show(s: sess.Session) -> tuple:
        r = sess.render(predictor, s)
        return s, r.view, r.caption, r.gallery, r.clicks_text, r.mask

    def action(step: Callable[..., sess.Session]) -> Callable:
        """An endpoint: bad values from the page or the API (None, NaN, text) end in one message, not a traceback."""

        def run(s: sess.Session, *values) -> tuple:
            try:
                return show(step(s, *values))
            except InputError as err:
                raise gr.Error(str(err), print_exception=False) from None

        return run

    def on_select(s: sess.Session, label: str, evt: gr.SelectData) -> tuple:
        x, y = evt.index[:2]
        return action(sess.add_display_click)(s, x, y, label)

    def on_upload(s: sess.Session, path: str | None) -> tuple:
        if path is None:  # the upload box was cleared
            return (*load_sample(), "")
        try:
            image = sess.read_upload(path)
        except InputError as err:  # too large, or not an image: say so, keep the session
            return (*show(s), f"**{err}**")
        gr.Info("Computing the image embedding (once per image; a few seconds on a CPU for a large model)")
        return (*show(sess.new_session(image, size, "Uploaded image", memory=s.memory)), "")

    def load_sample() -> tuple:
        return show(start)

    def suggest(s: sess.Session, rater: str | int) -> sess.Session:
        return sess.suggest(predictor, s, rater)

    def next_image(s: sess.Session) -> sess.Session:
        return sess.next_image(predictor, s, series)

    with gr.Blocks(title="AESPA demo", analytics_enabled=False) as app:
        state = gr.State(start)
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=3):
                view = gr.Image(
                    first.view,
                    label="Scan: click to add a point",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id="aespa-view",
                    buttons=["download", "fullscreen"],
                )
                with gr.Row():
                    label = gr.Radio(
                        [*sess.LABELS, sess.BOX_CORNER],
                        value="positive",
                        label="Next click (a box: two clicks on opposite corners)",
                    )
                    undo_btn, redo_btn, clear_btn = gr.Button("Undo"), gr.Button("Redo"), gr.Button("Clear")
                with gr.Row():
                    next_btn, forget_btn = gr.Button("Next image"), gr.Button("New session")
                clicks_box = gr.Textbox(
                    first.clicks_text,
                    label=f"Clicks: (x, y) in pixels of the {size}x{size} model input",
                    lines=3,
                    interactive=False,
                    elem_id="aespa-clicks",
                )
                with gr.Accordion("Click by coordinates", open=False):
                    with gr.Row():
                        x_in = gr.Number(0, label="x (column)", precision=0, minimum=0, maximum=size - 1)
                        y_in = gr.Number(0, label="y (row)", precision=0, minimum=0, maximum=size - 1)
                        add_btn = gr.Button("Add click")
                    with gr.Row():
                        corners = (("x0", 0), ("y0", 0), ("x1", size - 1), ("y1", size - 1))
                        box_in = [
                            gr.Number(v, label=name, precision=0, minimum=0, maximum=size - 1) for name, v in corners
                        ]
                        box_btn = gr.Button("Set box")
            with gr.Column(scale=2):
                caption = gr.Markdown(first.caption)
                gallery = gr.Gallery(
                    first.gallery,
                    label="Each rater against the prediction",
                    columns=2,
                    format="png",
                    allow_preview=False,
                )
                with gr.Row():
                    target = gr.Dropdown(
                        [(name, str(k)) for k, name in enumerate(start.rater_names)],
                        value="0",
                        label="Suggest a click toward",
                    )
                    suggest_btn = gr.Button("Suggest next click")
                with gr.Accordion("Your own image, raw prediction", open=False):
                    upload = gr.File(
                        label=f"Upload a scan (resized to the model input; at most "
                        f"{sess.MAX_UPLOAD_SIDE}x{sess.MAX_UPLOAD_SIDE} pixels, "
                        f"{sess.MAX_UPLOAD_BYTES // 1_000_000} MB)",
                        type="filepath",
                    )
                    upload_note = gr.Markdown("", elem_id="aespa-upload-note")
                    sample_btn = gr.Button("Back to the bundled sample")
                    mask = gr.Image(
                        first.mask,
                        label=f"Predicted mask ({size}x{size})",
                        type="numpy",
                        format="png",
                        image_mode="L",
                        interactive=False,
                    )

        outputs = [state, view, caption, gallery, clicks_box, mask]
        # One queue for every action; a click made while the previous one runs is ignored (gradio's "once":
        # "multiple" can reorder quick clicks, whose requests race, and "always_last" repeats the first one).
        queue = dict(concurrency_id="aespa", concurrency_limit=1, trigger_mode="once", show_progress="minimal")
        view.select(on_select, [state, label], outputs, api_visibility="private", **queue)
        # values reach the session unconverted: its checks answer in one line, gradio's would print a traceback
        checked = dict(queue, preprocess=False)
        add_btn.click(action(sess.add_click), [state, x_in, y_in, label], outputs, api_name="add_click", **checked)
        undo_btn.click(action(sess.undo), [state], outputs, api_name="undo", **queue)
        redo_btn.click(action(sess.redo), [state], outputs, api_name="redo", **queue)
        clear_btn.click(action(sess.clear), [state], outputs, api_name="clear", **queue)
        box_btn.click(action(sess.set_box), [state, *box_in], outputs, api_name="set_box", **checked)
        suggest_btn.click(action(suggest), [state, target], outputs, api_name="suggest", **checked)
        next_btn.click(action(next_image), [state], outputs, api_name="next_image", **queue)
        forget_btn.click(action(sess.forget), [state], outputs, api_name="new_session", **queue)
        upload.upload(on_upload, [state, upload], outputs + [upload_note], api_name="upload", **queue)
        sample_btn.click(load_sample, None, outputs, api_name="load_sample", **queue)
    return app
