"""The evidence issue's baselines and measurements (issue 13): the click editor and consensus on hand-made 8x8
cases, the following matrix and Follow_accuracy on a constructed case, SPA's click map and scored prediction."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_run_args

import val
from analysis.run_files import read_metrics
from engine import loops as engine
from interaction import validation
from interaction.clicks import paint_clicks
from interaction.spa import candidate_click, find_candidates
from models import Decoded
from multirater_metrics import MetricAccumulator, neutral_mask


def square(top: int, left: int, size: int, n: int = 8) -> torch.Tensor:
    mask = torch.zeros(n, n)
    mask[top : top + size, left : left + size] = 1
    return mask


def grid(text: str) -> torch.Tensor:
    """An 8x8 mask from rows of '.' and '#'."""
    return torch.tensor([[c == "#" for c in row.strip()] for row in text.strip().splitlines()], dtype=torch.float32)


# Three raters: a 4x4 square, a 5x5 square around it, a 3x3 square inside it -> the majority (2 of 3) is the 4x4.
RATERS = torch.stack([square(2, 2, 4), square(2, 2, 5), square(3, 3, 3)])[None]  # 1x3x8x8
VALID = torch.ones(1, 3, dtype=torch.bool)
MAJORITY = grid("""
    ........
    ........
    ..####..
    ..####..
    ..####..
    ..####..
    ........
    ........
""")


def test_consensus_is_the_majority_mask():
    assert torch.equal(neutral_mask(RATERS, VALID)[0].float(), MAJORITY)


def test_click_editor_paints_disks_in_click_order():
    """Click 1 at (x=6, y=6) positive and click 2 at (x=2, y=2) negative, radius 1: each paints its pixel and
    its four neighbours (worked out by hand below)."""
    points = torch.tensor([[[6.0, 6.0], [2.0, 2.0]]])
    labels = torch.tensor([[1, 0]])
    expected = grid("""
        ........
        ........
        ....##..
        ...###..
        ..####..
        ..#####.
        .....###
        ......#.
    """)
    assert torch.equal(paint_clicks(MAJORITY[None], points, labels, radius=1)[0], expected)
    # radius 0: the clicked pixel alone; the later click wins where they overlap
    later_wins = paint_clicks(MAJORITY[None], torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), torch.tensor([[1, 0]]), 0)
    assert torch.equal(later_wins[0], MAJORITY)
    assert torch.equal(paint_clicks(MAJORITY[None], None, None, 3)[0], MAJORITY)  # no click yet


@pytest.mark.parametrize("mode", ["consensus", "click_editor"])
def test_val_py_runs_a_baseline_without_weights(synthetic_root, tmp_path, mode):
    rows = val.main(tiny_run_args(synthetic_root, tmp_path, "-mode", mode))
    assert [r["clicks"] for r in rows] == [0, 1, 2]
    assert all(r["mode"] == mode and "loss" not in r for r in rows)
    assert rows[0]["Dice_neutral"] == pytest.approx(1.0)  # round 1 is the majority mask itself
    if mode == "consensus":
        assert all(r["Dice_neutral"] == pytest.approx(1.0) for r in rows)  # whatever the clicks
    run = next(tmp_path.glob(f"*{mode}_val_*"))
    assert [r["split"] for r in read_metrics(run / "metrics.jsonl")] == ["test"] * 3
    assert (run / "per_image.csv").is_file() and list(run.glob("follow_matrix_test_*.json"))


def test_paint_clicks_on_the_consensus_is_the_click_editor(synthetic_root, tmp_path):
    """-paint_clicks R paints every click into whatever is predicted, so applied to the consensus it must give the
    click editor of radius R, round by round (the clicks follow the painted predictions in both)."""
    painted = val.main(tiny_run_args(synthetic_root, tmp_path / "a", "-mode", "consensus", "-paint_clicks", "2"))
    editor = val.main(tiny_run_args(synthetic_root, tmp_path / "b", "-mode", "click_editor", "-editor_radius", "2"))
    assert [r["Dice_follow"] for r in painted] == pytest.approx([r["Dice_follow"] for r in editor], abs=1e-6)
    assert painted[-1]["Dice_neutral"] < 1.0  # the clicks changed the consensus


def test_follow_accuracy_and_the_following_matrix():
    """One image, three raters; three rows follow raters 0, 1, 2 and predict rater 0's, rater 0's and rater 2's
    mask: rows 0 and 2 are closest to their rater, row 1 is not."""
    raters = torch.stack([square(0, 0, 4), square(0, 0, 2), square(4, 4, 4)])[None]  # 1x3x8x8
    batch = SimpleNamespace(raters=raters, valid=torch.ones(1, 3, dtype=torch.bool))
    user = SimpleNamespace(rows=torch.tensor([0, 0, 0]), rater=torch.tensor([0, 1, 2]))
    pred = torch.stack([raters[0, 0], raters[0, 0], raters[0, 2]])
    values = validation.following(batch, user, pred)
    assert values["Follow_accuracy"].tolist() == [1.0, 0.0, 1.0]
    # Dice(16-px square, 4-px square inside it) = 2*4 / 20 = 0.4; disjoint squares: 0 (up to the 1e-8 terms)
    assert values["Dice_follow@rater1"].tolist() == pytest.approx([0.4])
    acc = MetricAccumulator()
    acc.update(values, round=1)
    cfg = SimpleNamespace(options=None)
    mode = SimpleNamespace(clicks_of_round=lambda r, options: r - 1)
    matrix = engine.follow_matrix(acc, 3, "test", mode, cfg, n_raters=3)["rounds"][0]["matrix"]
    expected = [[1.0, 0.4, 0.0], [1.0, 0.4, 0.0], [0.0, 0.0, 1.0]]
    assert matrix == [[pytest.approx(v, abs=1e-6) for v in row] for row in expected]


def test_follow_accuracy_skips_rows_without_another_rater():
    raters = torch.stack([square(0, 0, 4), torch.zeros(8, 8)])[None]
    batch = SimpleNamespace(raters=raters, valid=torch.tensor([[True, False]]))
    user = SimpleNamespace(rows=torch.tensor([0]), rater=torch.tensor([0]))
    assert torch.isnan(validation.following(batch, user, raters[0, :1])["Follow_accuracy"]).all()


def test_spa_scores_the_mean_of_its_samples_and_clicks_where_selected_and_others_differ():
    """Four latent samples: three predict square A (rows/cols 1-3), one square B (rows/cols 4-6); the target is A.
    k-means finds {A, A, A} and {B}; the user selects A's centre; the recommended prediction is the mean of the four;
    the click goes to the deepest pixel where the selected centre (A) and the other samples (B) disagree: the two
    3x3 regions tie in depth, so the negative region B wins (RITM: positive only when strictly deeper) at its
    centre (x=5, y=5), labelled from the target (0)."""
    a, b = square(1, 1, 3), square(4, 4, 3)
    logits = (torch.stack([a, a, a, b]) * 20 - 10)[None]  # 1x4x8x8
    target = a[None]
    cand = find_candidates(Decoded(torch.zeros(1, 4, 2, 2), logits), target, 2, torch.Generator().manual_seed(0))
    probs = torch.sigmoid(logits)
    assert torch.equal(cand.pred, probs.mean(1))  # scored: the recommended prediction
    torch.testing.assert_close(cand.feedback, probs[:, :3].mean(1))  # the selected centre (A's cluster)
    assert cand.members.tolist() == [[True, True, True, False]]
    assert cand.extra["Dice_selected"].item() == pytest.approx(1.0)
    points, labels = candidate_click("center", cand, target, torch.zeros(1, 8, 8, dtype=torch.bool), None)
    assert points.tolist() == [[5.0, 5.0]] and labels.tolist() == [0]
