"""The demo (aespa_demo.py): served in a subprocess, driven through gradio_client and headless Chromium.

Expected masks come from an independent replay of the click protocol with the model's own methods
(demo_support.oracle), expected colours from the overlay's definition (demo/render.py's docstring).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_support import ROOT, demo_server, load_model, make_checkpoint, model_input, oracle, run_demo
from PIL import Image

import aespa_demo
from demo import session as sess
from demo.predictor import Click, Predictor
from demo.render import to_model_xy
from demo.sample import load_sample
from interaction.clicks import next_click
from pipeline.image_files import read_mask, resize_mask
from pipeline.synthetic import case_stream, make_case
from utils import InputError, run_cli

SAMPLE = ROOT / "demo" / "sample"
S, K = 64, 6  # the tiny model's input size; the view shows it at 6x (384 px)
CLICKS = [(40, 25, 1), (20, 40, 0)]  # (x, y, label) in model pixels; each one changes the mask
NEAR_THRESHOLD = 1e-4  # a pixel this close to p = 0.5 may round either way in another process


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("demo_ckpt") / "tiny.pth", seed=1)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return model_input(SAMPLE / "image.png", S)


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    """What the demo server prints (stdout and stderr)."""
    return tmp_path_factory.mktemp("demo_log") / "demo.log"


@pytest.fixture(scope="module")
def server(checkpoint, server_log) -> str:
    with demo_server("-weights", str(checkpoint), log=server_log) as url:
        yield url


def assert_mask(mask: np.ndarray, probs: np.ndarray) -> None:
    wrong = (mask != (probs > 0.5)) & (np.abs(probs - 0.5) > NEAR_THRESHOLD)
    assert not wrong.any(), f"{int(wrong.sum())} of {mask.size} pixels differ from the model's prediction"


def clear_cells(fg: np.ndarray, clicks) -> tuple[np.ndarray, np.ndarray]:
    """Model pixels whose 3x3 neighbourhood is all foreground / all background and that no click marker
    covers (within 2 pixels of a click): their colour in a view does not depend on edges or markers."""
    pad = np.pad(fg, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3))  # SxSx3x3
    free = np.ones_like(fg)
    for x, y, _ in clicks:
        free[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = False
    return windows.all((2, 3)) & free, ~windows.any((2, 3)) & free


def assert_overlay(rgb_at: np.ndarray, fg: np.ndarray, clicks, tolerance: int) -> None:
    """rgb_at SxSx3: the view's colour at each model pixel's centre. Under the prediction, red at 1/2 on a
    grey scan gives R - G = 127; elsewhere the scan stays grey (R = G)."""
    inside, outside = clear_cells(fg, clicks)
    assert inside.sum() >= 10 and outside.sum() >= 10, "the prediction should have clear foreground and background"
    red_excess = rgb_at[..., 0].astype(int) - rgb_at[..., 1].astype(int)
    assert (red_excess[inside] >= 127 - tolerance).all(), "a foreground pixel lacks the red overlay"
    assert (np.abs(red_excess[outside]) <= tolerance).all(), "a background pixel is tinted"


def rater_masks() -> np.ndarray:
    return np.stack([resize_mask(read_mask(SAMPLE / f"rater_{k}.png"), S) for k in range(4)])  # 4xSxS


def test_display_to_model_pixels():
    # hand-computed: D = 384 = 6 * 64, so display pixel p lies in model pixel floor(p / 6), clamped
    table = [((0, 0), (0, 0)), ((5.9, 6), (0, 1)), ((383, 383), (63, 63)), ((400, -3), (63, 0)), ((245, 150), (40, 25))]
    for (x, y), expected in table:
        assert to_model_xy(x, y, 384, 64) == expected


def test_api_clicks_follow_the_model(server, model, image, tmp_path):
    from gradio_client import Client

    client = Client(server, verbose=False, download_files=str(tmp_path))
    masks = []

    def check(result, clicks) -> np.ndarray:
        view_file, caption, gallery, clicks_text, mask_file = result
        probs = oracle(model, image, clicks)
        mask = np.asarray(Image.open(mask_file)) > 127
        assert_mask(mask, probs)
        view = np.asarray(Image.open(view_file).convert("RGB"))
        assert view.shape == (S * K, S * K, 3)
        assert_overlay(view[K // 2 :: K, K // 2 :: K], probs > 0.5, clicks, tolerance=1)
        for i, (x, y, label) in enumerate(clicks, 1):
            assert f"{i}. ({x}, {y}) {'positive' if label else 'negative'}" in clicks_text
        raters = rater_masks()
        pred = probs > 0.5
        dices = [(2 * (pred & r).sum() + 1e-8) / (pred.sum() + r.sum() + 1e-8) for r in raters]
        assert f"Following: rater {int(np.argmax(dices))} " in caption
        assert [tile["caption"].split(" (")[0] for tile in gallery] == [f"rater {k}" for k in range(4)]
        return mask

    masks.append(check(client.predict(api_name="/load_sample"), []))
    for n, (x, y, label) in enumerate(CLICKS, 1):
        result = client.predict(x, y, "positive" if label else "negative", api_name="/add_click")
        masks.append(check(result, CLICKS[:n]))
        assert (masks[-1] != masks[-2]).any(), "a click did not change the mask"
    assert np.array_equal(check(client.predict(api_name="/undo"), CLICKS[:1]), masks[1])
    assert np.array_equal(check(client.predict(api_name="/redo"), CLICKS), masks[2])

    # "Suggest next click" toward rater 1: the centre click of docs/interaction.md#clicks on the current error
    exclude = torch.zeros(1, S, S, dtype=torch.bool)
    for x, y, _ in CLICKS:
        exclude[0, y, x] = True
    point, label = next_click(
        "center",
        torch.from_numpy(oracle(model, image, CLICKS))[None],
        torch.from_numpy(rater_masks()[1])[None],
        exclude=exclude,
    )
    suggested = (int(point[0, 0]), int(point[0, 1]), int(label[0]))
    check(client.predict("1", api_name="/suggest"), CLICKS + [suggested])  # the rater's number as text, as documented
    assert np.array_equal(check(client.predict(api_name="/clear"), []), masks[0])


def test_api_upload_has_no_raters(server, model, tmp_path):
    from gradio_client import Client, handle_file

    path = tmp_path / "scan.png"
    Image.fromarray(make_case(case_stream(0, "test", 5)).image).save(path)
    client = Client(server, verbose=False, download_files=str(tmp_path))
    image = model_input(path, S)
    _, caption, gallery, _, mask_file, note = client.predict(handle_file(str(path)), api_name="/upload")
    assert_mask(np.asarray(Image.open(mask_file)) > 127, oracle(model, image, []))
    assert "no raters" in caption and not gallery and note == ""
    _, _, _, clicks_text, mask_file = client.predict(*CLICKS[0][:2], "positive", api_name="/add_click")
    assert_mask(np.asarray(Image.open(mask_file)) > 127, oracle(model, image, CLICKS[:1]))
    assert clicks_text == f"1. ({CLICKS[0][0]}, {CLICKS[0][1]}) positive"


def test_api_uploads_over_a_limit_or_not_images_are_refused_in_the_page(server, tmp_path):
    """Each refusal is one line naming the file and the limit with the file's size; the session (the bundled
    sample with one click) is shown unchanged and goes on."""
    from gradio_client import Client, handle_file

    big = tmp_path / "big.png"
    Image.new("L", (4100, 4100)).save(big)  # a few KB of PNG, 16.8 megapixels
    heavy = tmp_path / "heavy.png"
    Image.new("L", (8, 8)).save(heavy)
    with heavy.open("r+b") as f:
        f.truncate(52_000_000)  # a valid image followed by zeros: 52 MB
    text, fake = tmp_path / "notes.txt", tmp_path / "scan.png"
    text.write_text("not an image\n")
    fake.write_text("a text file named like an image\n")
    expected = {
        big: "Upload refused: big.png is 4100x4100 = 16,810,000 pixels, over the limit of 4096x4096 = 16,777,216 "
        "pixels",
        heavy: "Upload refused: heavy.png is 52.0 MB, over the limit of 50 MB per file",
        text: "Upload refused: notes.txt is not an image file",
        fake: "Upload refused: scan.png is not an image file",
    }
    client = Client(server, verbose=False, download_files=str(tmp_path / "got"))
    client.predict(api_name="/load_sample")
    x, y, label = CLICKS[0]
    _, caption, _, clicks_text, mask_file = client.predict(x, y, "positive", api_name="/add_click")
    mask = np.asarray(Image.open(mask_file))
    for path, message in expected.items():
        _, got_caption, gallery, got_clicks, got_mask, note = client.predict(handle_file(str(path)), api_name="/upload")
        assert note.strip("*").startswith(message) and "\n" not in note, note
        assert (got_caption, got_clicks, len(gallery)) == (caption, clicks_text, 4)
        assert np.array_equal(np.asarray(Image.open(got_mask)), mask)
    _, _, _, clicks_text, _ = client.predict(*CLICKS[1][:2], "negative", api_name="/add_click")
    assert clicks_text.splitlines()[1] == f"2. ({CLICKS[1][0]}, {CLICKS[1][1]}) negative"  # the same session went on


def test_upload_limits_at_their_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(sess, "MAX_UPLOAD_SIDE", 10)
    monkeypatch.setattr(sess, "MAX_UPLOAD_PIXELS", 100)
    Image.new("L", (10, 10), 255).save(tmp_path / "at.png")
    Image.new("L", (10, 11)).save(tmp_path / "over.png")
    assert sess.read_upload(tmp_path / "at.png").shape == (10, 10)  # grey, as the data loaders read it
    with pytest.raises(InputError, match=r"over.png is 10x11 = 110 pixels, over the limit of 10x10 = 100 pixels$"):
        sess.read_upload(tmp_path / "over.png")
    size = (tmp_path / "at.png").stat().st_size
    monkeypatch.setattr(sess, "MAX_UPLOAD_BYTES", size)
    assert sess.read_upload(tmp_path / "at.png").max() == 1.0
    monkeypatch.setattr(sess, "MAX_UPLOAD_BYTES", size - 1)
    with pytest.raises(InputError, match="at.png is .* MB, over the limit of"):
        sess.read_upload(tmp_path / "at.png")


def test_an_upload_whose_pixels_are_cut_short_is_refused(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])  # the header survives, most pixel data does not
    with pytest.raises(InputError, match="^Upload refused: cut.png could not be decoded [(][^\n]*[)]$"):
        sess.read_upload(path)


def test_two_corner_clicks_make_a_box_that_stays_in_the_prompt(model, image):
    start = sess.new_session(np.zeros((S, S), np.float32), S, "t")
    one = sess.add_display_click(start, 50 * K + 1, 10 * K + 2, sess.BOX_CORNER)  # display pixels -> model (50, 10)
    assert one.box is None and one.corner == (50, 10) and "click the opposite corner" in sess.describe_clicks(one)
    two = sess.add_display_click(one, 12 * K, 40 * K, sess.BOX_CORNER)
    assert two.box == (12, 10, 50, 40) and two.corner is None  # corners in any order
    clicked = sess.add_click(two, 30, 30, "positive")
    assert sess.undo(clicked).box == two.box and sess.clear(clicked).box is None
    predictor = Predictor(model, torch.device("cpu"))
    box, clicks = (12, 10, 50, 40), [Click(30, 30, 1)]
    probs = predictor.predict(image[0], clicks, box)
    assert np.allclose(probs, oracle(model, image, [(30, 30, 1)], box), atol=1e-5)
    assert not np.allclose(probs, predictor.predict(image[0], clicks), atol=1e-3)  # the box does change it


def test_api_sets_a_box(server, model, image, tmp_path):
    from gradio_client import Client

    client = Client(server, verbose=False, download_files=str(tmp_path))
    client.predict(api_name="/load_sample")
    _, _, _, clicks_text, mask_file = client.predict(8, 9, 40, 44, api_name="/set_box")
    assert clicks_text.startswith("box (8, 9) - (40, 44)")
    assert_mask(np.asarray(Image.open(mask_file)) > 127, oracle(model, image, [], (8, 9, 40, 44)))


@pytest.mark.parametrize(
    "endpoint, args, named",
    [
        ("/add_click", (3, None, "positive"), "y: "),
        ("/add_click", ("abc", 3, "positive"), "'abc'"),  # refused by gradio's Number itself, naming the value
        ("/set_box", (1, 2, None, 4), "x1: "),
        ("/add_click", (3, 3, "sideways"), "label: a click is positive or negative (1 or 0), got 'sideways'"),
        ("/suggest", ("rater 1",), 'rater: expected a rater number, "0" to "3", got \'rater 1\''),
        ("/suggest", ("4",), 'rater: expected a rater number, "0" to "3", got \'4\''),
    ],
    ids=["null", "text", "box", "label", "rater-name", "rater-out-of-range"],
)
def test_api_calls_with_bad_values_answer_one_message(server, server_log, tmp_path, endpoint, args, named):
    """null or text where a coordinate belongs (NaN cannot travel as JSON; model_pixel refuses it below), a label or
    a rater that is not one: the call fails with a message naming it (not a bare `{"error": null}`), the server
    prints no traceback, and the session goes on."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False, download_files=str(tmp_path))
    client.predict(api_name="/load_sample")
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=endpoint)
    assert named in str(err.value), str(err.value)
    _, _, _, clicks_text, _ = client.predict(3, 4, "positive", api_name="/add_click")
    assert "(3, 4) positive" in clicks_text
    assert "Traceback" not in server_log.read_text()


def test_the_suggest_endpoint_documents_the_rater_as_the_text_it_accepts(server):
    from gradio_client import Client

    (rater,) = Client(server, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"][
        "/suggest"
    ]["parameters"]
    assert rater["type"] == {"type": "string", "enum": ["0", "1", "2", "3"]}


@pytest.mark.parametrize("value, number", [("2", 2), ("0", 0), (3, 3)])
def test_a_rater_is_its_number_as_text_or_an_int(value, number):
    s = sess.new_session(np.zeros((8, 8)), S, "Bundled sample", load_sample())
    assert sess.rater_number(value, s) == number


@pytest.mark.parametrize("value", ["rater 1", "4", "-1", -1, 4, True, None, 1.0, "²", " 1"])
def test_a_value_that_names_no_rater_is_refused_in_one_line(value):
    s = sess.new_session(np.zeros((8, 8)), S, "Bundled sample", load_sample())
    with pytest.raises(InputError, match=f'^rater: expected a rater number, "0" to "3", got {re.escape(repr(value))}$'):
        sess.rater_number(value, s)


def test_suggest_on_an_image_without_raters_says_so():
    upload = sess.new_session(np.zeros((8, 8)), S, "Uploaded image")
    with pytest.raises(InputError, match="^rater: Uploaded image has no raters to follow"):
        sess.rater_number("0", upload)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, "3", True])
def test_a_coordinate_that_is_not_a_finite_number_is_refused_naming_it(value):
    with pytest.raises(InputError, match="^x: expected a pixel coordinate"):
        sess.model_pixel(value, "x", 64)
    assert sess.model_pixel(70.6, "x", 64) == 63 and sess.model_pixel(-2, "x", 64) == 0


def test_newest_default_run_is_used(checkpoint, tmp_path):
    runs = [tmp_path / "logs" / name / "Model" / "checkpoint_best.pth" for name in ("b_older", "a_newer")]
    for age, path in zip((100, 0), runs):
        path.parent.mkdir(parents=True)
        shutil.copy(checkpoint, path)
        os.utime(path, (time.time() - age, time.time() - age))
    cfg = aespa_demo.demo_setup(["-log_dir", str(tmp_path / "logs")]).config
    assert cfg.model.weights == str(runs[1]) and (cfg.model.encoder, cfg.model.image_size) == ("vit_t", S)


def browser_paths() -> tuple[str, str] | None:
    chromium, driver = (
        shutil.which("chromium") or "/usr/bin/chromium",
        shutil.which("chromedriver") or "/usr/bin/chromedriver",
    )
    if Path(chromium).exists() and Path(driver).exists():
        return chromium, driver
    reason = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
    if os.environ.get("AESPA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AESPA_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def settled_screenshot(driver, path: Path, timeout: float = 30) -> np.ndarray:
    """Screenshots until two in a row agree (gradio fades an output in after an update), saved to `path`."""
    previous, deadline = None, time.monotonic() + timeout
    while True:
        driver.save_screenshot(str(path))
        screen = np.asarray(Image.open(path).convert("RGB"))
        if previous is not None and np.array_equal(screen, previous) or time.monotonic() > deadline:
            return screen
        previous = screen
        time.sleep(0.3)


def test_browser_click_shows_overlay(server, model, image, tmp_path):
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    view_js = "const i = document.querySelector('#aespa-view img'); "
    try:
        driver.get(server)
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(view_js + "return i && i.complete && i.naturalWidth > 0")
        )
        img = driver.find_element(By.CSS_SELECTOR, "#aespa-view img")
        old_src = img.get_attribute("src")
        left, top, width, height, natural = driver.execute_script(
            view_js + "const r = i.getBoundingClientRect(); return [r.left, r.top, r.width, r.height, i.naturalWidth]"
        )
        scale = min(width, height) / natural  # the view is square; drawn centred (object-fit: contain)
        off_x, off_y = (width - natural * scale) / 2, (height - natural * scale) / 2
        x, y, _ = CLICKS[0]
        to_centre = lambda v, extent, off: off + (v + 0.5) * K * scale - extent / 2  # noqa: E731
        ActionChains(driver).move_to_element_with_offset(
            img, round(to_centre(x, width, off_x)), round(to_centre(y, height, off_y))
        ).click().perform()
        WebDriverWait(driver, 60).until(
            lambda d: (
                f"1. ({x}, {y}) positive"
                in d.find_element(By.CSS_SELECTOR, "#aespa-clicks textarea").get_attribute("value")
            )
        )
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(
                view_js + "return i.complete && i.naturalWidth > 0 && i.src !== arguments[0]", old_src
            )
        )
        left, top, width, height = driver.execute_script(
            view_js + "const r = i.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]"
        )
        ratio = driver.execute_script("return window.devicePixelRatio")
        shot = tmp_path / "demo_click.png"
        screen = settled_screenshot(driver, shot)
    finally:
        driver.quit()
    centres = (np.arange(S) + 0.5) * K * scale  # model pixel centres in CSS px from the drawn image's corner
    cols = np.floor((left + off_x + centres) * ratio).astype(int)
    rows = np.floor((top + off_y + centres) * ratio).astype(int)
    probs = oracle(model, image, CLICKS[:1])
    assert_overlay(screen[rows[:, None], cols[None, :]], probs > 0.5, CLICKS[:1], tolerance=12)


@pytest.mark.parametrize("case", ["missing", "garbage"])
def test_bad_checkpoint_is_one_line(case, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    path = tmp_path / "nope.pth" if case == "missing" else garbage
    result = run_demo("-weights", str(path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_flags_and_no_checkpoint(checkpoint, tmp_path, capsys):
    args = aespa_demo.demo_setup(["-weights", str(checkpoint)]).extra
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)  # loopback, no public link
    with pytest.raises(InputError, match="-port"):
        aespa_demo.demo_setup(["-weights", str(checkpoint), "-port", "70000"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(aespa_demo.main, ["-log_dir", str(tmp_path / "no_runs_here")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code != 0 and len(lines) == 1 and "python train.py" in lines[0]


def test_reference_checkpoint_runs_its_conventions(tmp_path, model, image):
    """The published format (docs/differences.md#the-published-checkpoint) is accepted and runs under -compat
    reference, whose (y, x) click order the demo's predictions follow: clicking (x, y) there equals clicking (y, x)
    under the default."""
    shapes = json.loads((ROOT / "tests" / "data" / "aespa_reference_state_dict_shapes.json").read_text())
    rng = np.random.default_rng(0)
    w = rng.random(16)
    path = tmp_path / "checkpoint_aespa_lidc.pth"
    torch.save(
        {
            "epoch": 100,
            "model": "sam",
            "path_helper": {},
            "optimizer": {},
            "state_dict": {k: torch.full((1,), 0.01).expand(v) for k, v in shapes.items()},  # a few KB on disk
            "EM_weights": w / w.sum(),
            "EM_means": rng.uniform(-100, 100, 16),
            "EM_variances": rng.uniform(0.1, 10, 16),
        },
        path,
    )
    setup = aespa_demo.demo_setup(["-weights", str(path)])
    cfg = setup.config
    predictor, _ = aespa_demo.load_predictor(setup)
    m = cfg.model
    assert (m.compat, m.fcomb, m.encoder, predictor.model.point_order) == ("reference", "reference", "vit_b", "yx")

    yx_model = copy.deepcopy(model)
    yx_model.config["point_order"] = "yx"  # the convention travels in the model's config
    flipped = Predictor(yx_model, torch.device("cpu"))
    probs = flipped.predict(image[0], [Click(x, y, label) for x, y, label in CLICKS])
    assert np.allclose(probs, oracle(model, image, [(y, x, label) for x, y, label in CLICKS]), atol=1e-5)
