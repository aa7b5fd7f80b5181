"""The demo's sessions (demo/session.py) with a model that has a session memory: the next image carries the style of
the prediction the user ended with, a new session forgets it, and the caption says whom the memory is closest to.
In-process (no server): the page's buttons call exactly these functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demo import session as sess
from demo.predictor import Click, Predictor
from demo.sample import load_series
from models import build_model

S = 64


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    model, _ = build_model("vit_t", S, memory="style")
    with torch.no_grad():  # a memory that matters (its last layer starts at zero)
        for p in model.memory.to_shift.parameters():
            p.normal_(0, 0.2)
    return Predictor(model, torch.device("cpu"), memory_window=2)


@pytest.fixture(scope="module")
def series():
    return load_series()


def test_the_bundled_series_has_raters_on_every_image(series):
    assert len(series) >= 4
    assert all(s.raters.shape[0] == 4 and s.raters.any((1, 2)).all() for s in series)


def test_the_next_image_carries_the_style_of_the_prediction_ended_with(predictor, series):
    first = sess.series_session(series, 0, S)
    assert "no preference yet" in sess.render(predictor, first).caption
    clicked = sess.add_click(first, 30, 30, "positive")
    second = sess.next_image(predictor, clicked, series)
    assert second.series == 1 and len(second.memory) == 1 and second.clicks == ()
    ended = predictor.predict(sess.to_tensor(clicked), clicked.clicks, None, None)
    np.testing.assert_allclose(second.memory[0], predictor.styles(sess.to_tensor(clicked), ended[None])[0], atol=1e-6)
    blind = predictor.predict(sess.to_tensor(second), (), None, None)
    carried = predictor.predict(sess.to_tensor(second), (), None, second.memory[0])
    assert np.abs(carried - blind).max() > 1e-3  # the first prediction of the next image moved
    np.testing.assert_array_equal(sess.render(predictor, second).mask, sess.render(predictor, second).mask)
    forgotten = sess.forget(second)
    assert forgotten.memory == () and forgotten.series == 1
    assert "no preference yet" in sess.render(predictor, forgotten).caption


def test_the_memory_of_the_last_images_is_their_mean(predictor, series):
    s = sess.series_session(series, 2, S, memory=(np.ones(64), 3 * np.ones(64), 5 * np.ones(64)))
    np.testing.assert_allclose(sess.memory_of(predictor, s), 4 * np.ones(64))  # the window of 2: (3 + 5) / 2


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_the_caption_names_the_rater_whose_style_the_memory_holds(predictor, series, k):
    image = sess.series_session(series, 1, S)
    style = predictor.styles(sess.to_tensor(image), image.raters[k : k + 1])[0]
    s = sess.series_session(series, 1, S, memory=(style,))
    assert f"closest to **{s.rater_names[k]}**" in sess.render(predictor, s).caption


def test_a_model_without_memory_says_so_and_ignores_the_series_memory(series):
    torch.manual_seed(0)
    model, _ = build_model("vit_t", S)
    plain = Predictor(model, torch.device("cpu"))
    s = sess.series_session(series, 0, S)
    nxt = sess.next_image(plain, sess.add_click(s, 30, 30, 1), series)
    assert nxt.memory == () and "no session memory" in sess.render(plain, nxt).caption
    assert Click(30, 30, 1) not in nxt.clicks
