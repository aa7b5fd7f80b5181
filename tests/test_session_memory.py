"""The session memory (models/session_memory.py): no memory computes exactly what a model without one computes, a
memory moves only its own row, and a model with memory starts as the model without."""

from __future__ import annotations

import pytest
import torch

from models import build_model, mean_memory


def _pair(seed: int = 0):
    """A vit_t model with a session memory and the same weights without one."""
    torch.manual_seed(seed)
    with_memory, _ = build_model("vit_t", 64, memory="style", pixel_branch="unet")
    without, _ = build_model("vit_t", 64, pixel_branch="unet")
    missing, unexpected = without.load_state_dict(with_memory.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("memory.") for k in unexpected)
    return with_memory.eval(), without.eval()


def _decode(model, images, memory=None):
    features = model.image_features(images)
    points = torch.tensor([[[20.0, 30.0]], [[40.0, 12.0]], [[5.0, 50.0]]])
    labels = torch.tensor([[1], [0], [1]])
    prompts = model.prompt(len(images), points, labels, memory=memory)
    return model.decode_round(features, prompts).logits


def _perturb(model):
    with torch.no_grad():
        for p in model.memory.to_shift.parameters():
            p.normal_(0, 0.3)


def test_rows_without_memory_decode_as_a_model_without_memory():
    model, plain = _pair()
    _perturb(model)
    images = torch.rand(3, 3, 64, 64)
    memory = (torch.randn(3, 64), torch.tensor([False, False, False]))
    torch.testing.assert_close(_decode(model, images, memory), _decode(plain, images), rtol=0, atol=0)
    torch.testing.assert_close(_decode(model, images), _decode(plain, images), rtol=0, atol=0)


def test_a_model_with_memory_starts_as_the_model_without():
    model, plain = _pair(1)
    images = torch.rand(3, 3, 64, 64)
    memory = (torch.randn(3, 64), torch.tensor([True, True, True]))
    torch.testing.assert_close(_decode(model, images, memory), _decode(plain, images), rtol=0, atol=0)


def test_a_memory_moves_its_own_row_only():
    model, plain = _pair(2)
    _perturb(model)
    images = torch.rand(3, 3, 64, 64)
    memory = (torch.randn(3, 64), torch.tensor([False, True, False]))
    got, base = _decode(model, images, memory), _decode(plain, images)
    torch.testing.assert_close(got[[0, 2]], base[[0, 2]], rtol=0, atol=0)
    assert (got[1] - base[1]).abs().max() > 1e-3
    # batch independence: the memory row alone gives the same prediction
    alone = model.decode_round(
        model.image_features(images[1:2]),
        model.prompt(1, torch.tensor([[[40.0, 12.0]]]), torch.tensor([[0]]), memory=(memory[0][1:2], memory[1][1:2])),
    ).logits
    torch.testing.assert_close(alone[0], got[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "weights, expected, has",
    [
        ([[0.0, 0.0, 0.0]], [[0.0, 0.0]], [False]),
        ([[1.0, 1.0, 0.0]], [[2.0, 3.0]], [True]),  # mean of (1, 2) and (3, 4)
        ([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]], [[5.0, 6.0], [3.0, 4.0]], [True, True]),
    ],
)
def test_mean_memory_by_hand(weights, expected, has):
    styles = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    memory, got_has = mean_memory(styles, torch.tensor(weights))
    torch.testing.assert_close(memory, torch.tensor(expected))
    assert got_has.tolist() == has


def test_the_style_contrast_by_hand():
    from models import style_contrast

    # two raters' vectors: rater 0 at angle 0 and ~0, rater 1 at 90 degrees; temperature 1 for easy numbers
    styles = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = style_contrast(styles, torch.tensor([0, 0, 1]), temperature=1.0)
    # vector 0: positives {1}: -log(e^1 / (e^1 + e^0)); vector 1 the same; vector 2 has no positive (left out)
    expected = -torch.log(torch.tensor(torch.e / (torch.e + 1.0)))
    torch.testing.assert_close(loss, expected)
    assert style_contrast(styles, torch.tensor([0, 1, 2])) == 0  # no pair of one rater
