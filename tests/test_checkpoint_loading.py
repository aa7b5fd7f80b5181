"""Loading pretrained weights at any image size, containers and prefixes, and refusals
(docs/model.md#pretrained-weights-at-any-image-size)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_args

from models import CheckpointError, build_sam_from_config, sam_config
from models.checkpoint import _explain, read_checkpoint

DATA = Path(__file__).parent / "data"


# --- independent resampling oracles (NumPy, written from the definitions) ---------------------------


def linear_resample_rows(table: np.ndarray, rows: int) -> np.ndarray:
    """Half-pixel-centred linear interpolation along axis 0 (what `mode='linear'` means in PyTorch)."""
    n = table.shape[0]
    out = np.empty((rows, table.shape[1]), dtype=np.float64)
    for i in range(rows):
        x = max((i + 0.5) * n / rows - 0.5, 0.0)
        lo = min(int(math.floor(x)), n - 1)
        hi = min(lo + 1, n - 1)
        t = x - lo
        out[i] = (1 - t) * table[lo] + t * table[hi]
    return out


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys cubic-convolution weights for the 4 taps at offsets -1, 0, 1, 2 from floor(x)."""

    def k(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def bicubic_resample_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """HxWxC -> size x size x C; half-pixel centres, taps clamped at the border (PyTorch's bicubic)."""

    def axis_matrix(n):
        m = np.zeros((size, n))
        for i in range(size):
            x = (i + 0.5) * n / size - 0.5
            f = math.floor(x)
            for tap, w in zip(range(f - 1, f + 3), cubic_weights(x - f)):
                m[i, min(max(tap, 0), n - 1)] += w
        return m

    my, mx = axis_matrix(grid.shape[0]), axis_matrix(grid.shape[1])
    return np.einsum("ih,jw,hwc->ijc", my, mx, grid.astype(np.float64))


def random_state(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v, generator=g) for k, v in shapes.items()}


def check_resampled(sam, state, config_src, size):
    """Every tensor consumed: resampled ones as docs/model.md#pretrained-weights-at-any-image-size, all others
    bit-identical."""
    got = sam.state_dict()
    assert set(got) == set(state)
    grid = size // 16
    global_blocks = set(config_src["global_attn_indexes"])
    resampled = 0
    for key, value in state.items():
        if key == "image_encoder.pos_embed":
            expected = bicubic_resample_grid(value[0].numpy(), grid)[None]
            np.testing.assert_allclose(got[key].numpy(), expected, atol=1e-5)
            resampled += 1
        elif ".attn.rel_pos_" in key and int(key.split(".")[2]) in global_blocks:
            assert got[key].shape[0] == 2 * grid - 1
            np.testing.assert_allclose(got[key].numpy(), linear_resample_rows(value.numpy(), 2 * grid - 1), atol=1e-6)
            resampled += 1
        else:
            assert torch.equal(got[key], value), key
    assert resampled == 1 + 2 * len(global_blocks)


def test_tiny_fixture_at_256_loads_at_128(tmp_path):
    parity = torch.load(DATA / "sam_tiny_parity.pt", weights_only=True)
    path = tmp_path / "tiny256.pth"
    torch.save({"state_dict": parity["state_dict"]}, path)
    config = {**parity["config"], "img_size": 128}
    sam = build_sam_from_config(config, checkpoint=str(path))
    check_resampled(sam, parity["state_dict"], parity["config"], 128)
    # and the model runs at its own size
    with torch.no_grad():
        masks, _ = sam.predict(torch.rand(1, 3, 128, 128), points=(torch.tensor([[[30.0, 40.0]]]), torch.tensor([[1]])))
    assert masks.shape == (1, 1, 32, 32)


def test_vit_b_layout_at_1024_loads_at_128_through_a_wrapped_container(tmp_path):
    shapes = json.loads((DATA / "sam_vit_b_state_dict_shapes.json").read_text())
    state = random_state(shapes)
    path = tmp_path / "vitb.pth"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in state.items()}}, path)
    sam = build_sam_from_config(sam_config("vit_b", 128), checkpoint=str(path))
    check_resampled(sam, state, sam_config("vit_b", 1024), 128)


def test_same_size_load_gives_the_official_outputs(tmp_path):
    parity = torch.load(DATA / "sam_tiny_parity.pt", weights_only=True)
    path = tmp_path / "tiny.pth"
    torch.save(parity["state_dict"], path)
    sam = build_sam_from_config(parity["config"], checkpoint=str(path)).eval()
    inp, out = parity["inputs"], parity["outputs"]
    with torch.no_grad():
        emb = sam.image_encoder(inp["image_uint8"].float() / 255)
    assert (emb - out["image_embeddings"]).abs().max() <= 1e-5


# --- refusals: one line naming the problem ----------------------------------------------------------


def one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    return msg


def test_vit_h_shapes_into_vit_b_are_refused_naming_the_key_and_both_shapes(tmp_path):
    with torch.device("meta"):
        vit_h = build_sam_from_config(sam_config("vit_h", 1024))
    # Expanded one-element tensors save as one element each: a full-shape ViT-H state dict of a few KB.
    state = {k: torch.zeros(1).expand(v.shape) for k, v in vit_h.state_dict().items()}
    path = tmp_path / "vit_h.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_sam_from_config(sam_config("vit_b", 128), checkpoint=str(path))
    msg = one_line(err.value)
    assert "image_encoder.pos_embed" in msg and "(1, 64, 64, 1280)" in msg and "(1, 8, 8, 768)" in msg


@pytest.fixture(scope="module")
def parity():
    return torch.load(DATA / "sam_tiny_parity.pt", weights_only=True)


def refusal(config, path) -> str:
    """Load `path` expecting a refusal; return its message after checking it is one line naming the file."""
    with pytest.raises(CheckpointError) as err:
        build_sam_from_config(config, checkpoint=str(path))
    return one_line(err.value)


def drop_iou_token(state):
    del state["mask_decoder.iou_token.weight"]


def add_extra_key(state):
    state["mask_decoder.extra.weight"] = torch.zeros(3)


def long_windowed_table(state):  # block 0 is windowed: its table (27 rows) does not follow the image size
    state["image_encoder.blocks.0.attn.rel_pos_h"] = torch.zeros(31, 16)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (drop_iou_token, "missing key 'mask_decoder.iou_token.weight'"),
        (add_extra_key, "unexpected key 'mask_decoder.extra.weight' with shape (3,)"),
        (
            long_windowed_table,
            "key 'image_encoder.blocks.0.attn.rel_pos_h' has shape (31, 16) but the model expects (27, 16)",
        ),
    ],
)
def test_state_dicts_that_do_not_fit_are_refused(tmp_path, parity, edit, expected):
    state = dict(parity["state_dict"])
    edit(state)
    torch.save(state, tmp_path / "edited.pth")
    assert expected in refusal(parity["config"], tmp_path / "edited.pth")


def test_truncated_checkpoint_is_refused(tmp_path, parity):
    path = tmp_path / "tiny.pth"
    torch.save(parity["state_dict"], path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert str(path) in refusal(parity["config"], path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, parity):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    assert str(path) in refusal(parity["config"], path)


def test_missing_file_is_refused(tmp_path, parity):
    assert "not found" in refusal(parity["config"], tmp_path / "nope.pth")


def test_pickled_code_is_refused_not_run(tmp_path, parity):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": parity["state_dict"], "extra": Payload()}, path)
    assert "safe load refuses" in refusal(parity["config"], path)
    assert not (tmp_path / "pwned").exists()


class ShellCall:
    """Unpickling this would run a shell command: pickled as `posix.system` (`nt.system` on Windows)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


SYSTEM_GLOBAL = re.compile(r"\b(posix|nt|os)\.system\b")


def test_a_shell_call_is_refused_naming_the_global_without_torch_advice(tmp_path, parity):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": parity["state_dict"], "extra": ShellCall(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = one_line(err.value)
    assert str(path) in msg and SYSTEM_GLOBAL.search(msg), msg
    assert "weights_only" not in msg and "trusted source" not in msg, msg
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "torch_text, name",
    [  # torch >= 2.13 for a blocked module; torch 2.4-2.12 (and 2.13 for others) for a global not allow-listed
        (
            "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument "
            "in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
            "likely succeed, but it can result in arbitrary code execution. Do it only if you got the file from a "
            "trusted source.\n\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.\n\n"
            "Check the documentation of torch.load to learn more.",
            "posix.system",
        ),
        (
            "Weights only load failed. This file can still be loaded, to do so you have two options, do those steps "
            "only if you trust the source of the checkpoint. \n\t(1) Re-running `torch.load` with `weights_only` set "
            "to `False` will likely succeed\n\tWeightsUnpickler error: Unsupported global: GLOBAL os.system was not "
            "an allowed global by default. Please use `torch.serialization.add_safe_globals([os.system])`",
            "os.system",
        ),
    ],
)
def test_both_torch_wordings_of_a_refused_global_name_it_and_nothing_else(torch_text, name):
    msg = _explain(RuntimeError(torch_text))
    assert name in msg and "\n" not in msg, msg
    assert "weights_only" not in msg and "add_safe_globals" not in msg and "trusted" not in msg, msg


def test_an_unsupported_opcode_gives_no_torch_advice():
    text = (
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument. "
        "Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\nPlease file an issue "
        "with the following so that we can make `weights_only=True` compatible with your use case: "
        "WeightsUnpickler error: \n\nUnsupported operand 149\n\nCheck the documentation of torch.load"
    )
    msg = _explain(RuntimeError(text))
    assert "Unsupported operand 149" in msg and "weights_only" not in msg, msg


@pytest.mark.slow
def test_train_cli_refuses_a_shell_call_checkpoint_in_one_line(tmp_path, synthetic_root):
    path = tmp_path / "evil.pth"
    torch.save({"extra": ShellCall(tmp_path / "pwned")}, path)
    root = Path(__file__).resolve().parents[1]
    argv = tiny_run_args(synthetic_root, tmp_path / "logs", "-sam_ckpt", str(path))
    proc = subprocess.run(
        [sys.executable, str(root / "train.py"), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert SYSTEM_GLOBAL.search(lines[0]) and "weights_only" not in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()
