"""The session protocol (engine/sessions.py) and the simulated sessions of training (interaction/aespa.py): checked
against the per-image protocol, which a session without memory must equal image for image, and against hand-made
plans and batches."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_args

from cfg import make_config
from engine.build import build_loader, build_model_from_config
from engine.loops import evaluate
from engine.sessions import SessionMemories, evaluate_sessions, plan_sessions
from interaction.aespa import MODE as AESPA
from interaction.mode import LoopConfig
from pipeline.batch import Batch

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "keys, length, sizes",
    [
        ([""] * 10, 4, [4, 4, 2]),
        (["a"] * 3 + ["b"] * 5, 2, [2, 1, 2, 2, 1]),
        (["b", "a", "b", "a"], 8, [2, 2]),
    ],
)
def test_a_plan_cuts_each_group_into_sessions(keys, length, sizes):
    plan = plan_sessions(keys, length)
    assert [len(s) for s in plan] == sizes
    assert sorted(i for s in plan for i in s) == list(range(len(keys)))  # every image exactly once
    assert all(len({keys[i] for i in s}) == 1 for s in plan)  # a session never mixes groups
    assert plan == plan_sessions(keys, length)  # the same plan for every run


def test_memories_average_the_last_images_of_their_session_and_rater():
    memories = SessionMemories(window=2)
    memories.add([0, 0, 1], [0, 1, 0], torch.tensor([[1.0, 0.0], [2.0, 2.0], [5.0, 5.0]]), 1, 2)
    memories.add([0], [0], torch.tensor([[3.0, 4.0]]), 2, 2)
    memories.add([0], [0], torch.tensor([[5.0, 8.0]]), 3, 2)
    memory, count = memories.for_batch([0, 1, 2], n_raters=2, dim=2, device=CPU)
    torch.testing.assert_close(memory[0, 0], torch.tensor([4.0, 6.0]))  # (3, 4) and (5, 8): the window of 2
    torch.testing.assert_close(memory[0, 1], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(memory[1, 0], torch.tensor([5.0, 5.0]))
    assert count.tolist() == [[2, 1], [1, 0], [0, 0]]
    assert memory[2].abs().sum() == 0 and memory[1, 1].abs().sum() == 0


def test_after_a_switch_the_user_following_a_rater_brings_the_memory_of_the_rater_before():
    memories = SessionMemories(window=3, switch_at=3)
    memories.add([0, 0, 0], [0, 1, 2], torch.tensor([[0.0], [1.0], [2.0]]), 1, 3)  # users 0, 1, 2 at position 1
    memories.add([0, 0, 0], [0, 1, 2], torch.tensor([[10.0], [11.0], [12.0]]), 2, 3)
    before, _ = memories.for_batch([0], n_raters=3, dim=1, device=CPU, position=2)
    after, _ = memories.for_batch([0], n_raters=3, dim=1, device=CPU, position=3)
    assert before[0, :, 0].tolist() == [5.0, 6.0, 7.0]  # rater k: user k
    assert after[0, :, 0].tolist() == [7.0, 5.0, 6.0]  # rater k: user k - 1, who followed k - 1 so far
    memories.add([0], [1], torch.tensor([[20.0]]), 3, 3)  # at position 3 rater 1 is followed by user 0
    assert memories.styles[(0, 0)][-1].item() == 20.0


def _setup(synthetic_root, tmp_path, *extra):
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-session_length", "3", *extra))
    cfg = setup.config
    torch.manual_seed(0)
    model, _ = build_model_from_config(cfg, setup.files)
    if model.memory is not None:
        with torch.no_grad():  # a memory that matters (it starts at zero)
            for p in model.memory.to_shift.parameters():
                p.normal_(0, 0.2)
    return cfg, model.eval(), build_loader(cfg, "test")


def _by_key(rows):
    return {(r["image"], r["followed"], r["round"]): r for r in rows}


def _same(a: dict, b: dict, keys=("Dice_follow", "Dice_neutral")) -> bool:
    return all(abs(a[k] - b[k]) < 1e-6 for k in keys)


@pytest.mark.parametrize("extra", [(), ("-memory", "style", "-session_memory", "none")])
def test_sessions_without_memory_equal_the_per_image_protocol(synthetic_root, tmp_path, extra):
    cfg, model, loader = _setup(synthetic_root, tmp_path, *extra)
    plain = _by_key(evaluate(model, loader, cfg, 0, CPU).per_image)
    result = evaluate_sessions(model, loader, cfg, 0, CPU)
    assert {r["position"] for r in result.per_image} == {1, 2, 3}
    assert len(result.per_image) == len(plain)
    assert all(_same(r, plain[(r["image"], r["followed"], r["round"])]) for r in result.per_image)
    assert {r["position"] for r in result.rows} == {1, 2, 3} and all(r["protocol"] == "session" for r in result.rows)


@pytest.mark.parametrize("source", ["model", "oracle"])
def test_a_memory_changes_the_later_images_of_a_session_only(synthetic_root, tmp_path, source):
    cfg, model, loader = _setup(synthetic_root, tmp_path, "-memory", "style", "-session_memory", source)
    plain = _by_key(evaluate(model, loader, cfg, 0, CPU).per_image)
    rows = evaluate_sessions(model, loader, cfg, 0, CPU).per_image
    first = [r for r in rows if r["position"] == 1]
    later = [r for r in rows if r["position"] > 1]
    assert first and all(_same(r, plain[(r["image"], r["followed"], r["round"])]) for r in first)
    assert not all(_same(r, plain[(r["image"], r["followed"], r["round"])]) for r in later)


def _training_batch(valid: list[list[bool]], sessions: list[str]) -> Batch:
    b, r = len(valid), len(valid[0])
    raters = torch.zeros(b, r, 8, 8)
    for k in range(r):
        raters[:, k, k : k + 2, 1:5] = 1  # rater k's mask: its own rows
    generator = torch.Generator().manual_seed(3)
    return Batch(
        torch.rand(b, 3, 8, 8), raters, torch.tensor(valid), ["x"] * b, torch.arange(b), generator, sessions=sessions
    )


def test_training_memory_comes_from_other_images_of_the_session_with_the_memory_raters_mask():
    valid = [[True, True, True], [True, False, True], [True, True, True], [True, True, False], [True, True, True]]
    batch = _training_batch(valid, ["a", "a", "b", "a", "b"])
    options = AESPA.options(memory_context=3, memory_switch=0.0)
    for _ in range(20):  # several draws of the generator
        user = AESPA.user(batch, LoopConfig(), options, "train")
        weights = user.memory_context(batch.session_codes())  # BxBxR
        for i in range(5):
            used = weights[i].nonzero().tolist()
            assert len(used) <= 3
            for j, k in used:
                assert j != i and batch.sessions[j] == batch.sessions[i] and valid[j][k]
                assert k == int(user.rater[i])  # no switch: the followed rater's masks
            if used:  # until a click the target is the memory rater's mask
                torch.testing.assert_close(user.target[i], batch.raters[i, int(user.rater[i])])
            else:
                torch.testing.assert_close(user.target[i], batch.raters[i][batch.valid[i]].mean(0))


def _case(perturb: bool):
    from interaction.volume import CaseMemory, VolumeInteraction, slice_embeddings

    torch.manual_seed(0)
    model, _ = build_model_from_config(make_config(["-memory", "style", "-sam_ckpt", "none"]).config, {})
    if perturb:
        with torch.no_grad():
            for p in model.memory.to_shift.parameters():
                p.normal_(0, 0.2)
    model.eval()
    images = torch.rand(5, 3, 64, 64)
    vi = VolumeInteraction(model, slice_embeddings(model, images), batch=2)
    targets = torch.zeros(5, 64, 64, dtype=torch.bool)
    targets[:, 20:40, 24:44] = True
    sessions = [vi.session(z, 1, targets[z]) for z in range(5)]
    return vi, sessions, CaseMemory(vi, images, window=2)


def test_a_click_on_one_slice_moves_the_unclicked_slices_through_the_case_memory():
    vi, sessions, memory = _case(perturb=True)
    before = [s.probs.clone() for s in sessions]
    vi.click(sessions[2])
    clicked = sessions[2].probs.clone()
    memory.after_click(sessions[2], sessions)
    assert torch.equal(sessions[2].probs, clicked)  # the clicked slice keeps its prediction until its next click
    for z in (0, 1, 3, 4):
        assert not torch.allclose(sessions[z].probs, before[z], atol=1e-4)
        assert sessions[z].state.memory is not None


def test_a_case_memory_that_shifts_nothing_changes_nothing():
    vi, sessions, memory = _case(perturb=False)
    before = [s.probs.clone() for s in sessions]
    vi.click(sessions[1])
    memory.after_click(sessions[1], sessions)
    for z in (0, 2, 3, 4):
        torch.testing.assert_close(sessions[z].probs, before[z], rtol=0, atol=1e-6)


def test_session_batches_hold_pieces_of_one_group_and_every_image_once():
    from engine.build import SessionBatches

    keys = ["a"] * 5 + ["b"] * 3 + ["c"] * 8
    batches = list(SessionBatches(keys, batch_size=4, per_group=2, generator=torch.Generator().manual_seed(1)))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(16)) and all(len(b) <= 4 for b in batches)
    # laid end to end in pieces of two images of one group: a group's lone image (a, b) is a piece of its own
    pieces, i = [], 0
    while i < len(flat):
        size = 2 if i + 1 < len(flat) and keys[flat[i]] == keys[flat[i + 1]] else 1
        pieces.append(flat[i : i + size])
        i += size
    assert sorted(len(p) for p in pieces).count(1) == 2
    again = list(SessionBatches(keys, batch_size=4, per_group=2, generator=torch.Generator().manual_seed(1)))
    assert again == batches


def test_synthetic_raters_are_the_same_people_everywhere_and_lidc_raters_per_patient(synthetic_root):
    from dataset import build_dataset

    synthetic = build_dataset("synthetic", synthetic_root, "test", 32, n_train=16, n_test=8)
    lidc = build_dataset("LIDC", synthetic_root, "test", 32)  # the same files read as LIDC crops
    assert {synthetic[i]["session"] for i in range(len(synthetic))} == {""}
    assert [lidc[i]["session"] for i in range(len(lidc))] == [r.name.split("/")[0] for r in lidc.records]
