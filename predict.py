"""Predict whole MBH-Seg cases (NIfTI in, challenge submissions out), following each rater in turn.

    python predict.py -weights CKPT -data_path DIR -out OUT [-protocol budget|marked] [-track binary|multiclass]

DIR holds <case>/image.nii.gz and <case>/label_annot_<id>.nii.gz (the labels drive the simulated user). Every
case is read from its NIfTI files (reoriented and windowed as process_mbhseg.py does), predicted slice by slice
with each slice's image embedding computed once, and written back in its own geometry (shape, affine, header;
uint8; scaling reset) as OUT/follow_<id>/<case>.nii.gz (one folder per rater id) and OUT/follow_rank<k>/<case>.nii.gz
(each case's k-th rater by id: complete whenever every case has k raters), each a submission that
`python multirater_metrics.py -pred OUT/follow_<id> -gt DIR` scores. OUT/interaction.csv holds the 3-D Dice of
every case against its followed rater after each click, OUT/noc.csv the clicks each case needed (interaction/
volume.py describes the two protocols; every file names the protocol, the track and the first prompt).

A run is written into a fresh folder and put in OUT's place when every case is done, with OUT/manifest.json
(volumes/submission.py): its outputs never mix with an earlier run's. Only the flags it uses are accepted; a
checkpoint trained with `-first_prompt box` gets the box of the followed rater's mask on every slice it marks.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cfg import ARCHITECTURE_FLAGS, Setup, build_parser, given_flags, make_config, run_command
from engine.build import build_model_from_config
from engine.distributed import choose_device
from interaction.validation import AUC_CLICKS
from interaction.volume import (
    PROTOCOLS,
    CaseMemory,
    Session,
    VolumeInteraction,
    run_budget,
    run_marked,
    slice_embeddings,
    upsample,
)
from multirater_metrics import NOC_THRESHOLDS, click_auc, surface_dice_case
from pipeline.image_files import resize_image, resize_mask
from utils import InputError, OneLineParser, natural_key
from volumes.nifti import (
    case_folders,
    check_window,
    display_slice,
    display_spacing,
    from_display,
    load_image,
    load_label,
    read_case,
    save_like,
    to_file_order,
    window,
)
from volumes.scoring import challenge_dice, plain_dice
from volumes.submission import RunFolder

TRACKS = ("binary", "multiclass")
# The shared flags predict.py uses: the model (the checkpoint sets its architecture), the data, the device and
# -clicks (the marked protocol's rounds); every other training or validation flag is refused.
USED_FLAGS = (
    "weights",
    "sam_ckpt",
    "data_path",
    "device",
    "gpu",
    "gpu_device",
    "clicks",
    "session_memory",
    "memory_window",
    *ARCHITECTURE_FLAGS,
)


def predict_flags(parser: OneLineParser) -> list[str]:
    group = parser.add_argument_group("predict (whole MBH-Seg cases)")
    group.add_argument("-out", required=True, help="output folder: follow_<rater id>/<case>.nii.gz, interaction.csv")
    group.add_argument(
        "-protocol",
        choices=PROTOCOLS,
        default="budget",
        help="budget: -budget clicks per case on the worst slice; marked: -clicks rounds on every slice the followed "
        "rater marks",
    )
    group.add_argument("-budget", type=int, default=10, help="clicks per case (budget protocol)")
    group.add_argument(
        "-track",
        choices=TRACKS,
        default="binary",
        help="binary: every class is foreground; multiclass: a session per slice and class present, the most probable "
        "class above 0.5",
    )
    group.add_argument("-window_level", type=float, default=40.0, help="CT window centre in HU")
    group.add_argument("-window_width", type=float, default=80.0, help="CT window width in HU")
    group.add_argument(
        "-save_sets",
        action="store_true",
        help="also write OUT/sets/<case>_pred_s<k>.nii.gz: the predictions made following each rater (a case's set)",
    )
    return ["out", "protocol", "budget", "track", "window_level", "window_width", "save_sets"]


def model_inputs(hu: np.ndarray, size: int, level: float, width: float) -> torch.Tensor:
    """A canonical XxYxZ HU volume -> Zx3xSxS model inputs, each slice windowed and displayed as
    process_mbhseg.py writes its PNGs, then resized as the loaders resize images."""
    planes = [window(display_slice(hu, z), level, width).astype(np.float32) / 255.0 for z in range(hu.shape[2])]
    return torch.stack([resize_image(p, size) for p in planes])


class Case:
    """One case on the model's side: its slices' embeddings, each rater's label (display planes ZxHxW), and
    the geometry to write predictions back."""

    def __init__(self, folder: Path, model, size: int, device: torch.device, level: float, width: float):
        image_path, raters = read_case(folder)
        self.name, self.image = folder.name, load_image(image_path)
        self.raters = [(rater, load_label(path, self.image).data) for rater, path in raters]
        self.inputs = model_inputs(self.image.data, size, level, width).to(device)  # Zx3xSxS
        self.embeddings = slice_embeddings(model, self.inputs)
        self.z = self.image.data.shape[2]
        self.height, self.width = display_slice(self.image.data, 0).shape
        self.display_spacing = display_spacing(self.image)  # mm along the display stack's Z, rows, columns

    def planes(self, label: np.ndarray, cls: int | None) -> list[np.ndarray]:
        """A label volume's display planes as bool masks of class `cls` (None: any class)."""
        return [(display_slice(label, z) > 0) if cls is None else display_slice(label, z) == cls for z in range(self.z)]

    def write(self, planes: list[np.ndarray], path: Path) -> None:
        """Display planes (ZxHxW uint8 classes) -> the case's own geometry, as a NIfTI file."""
        canonical = np.stack([from_display(p) for p in planes], axis=2)
        save_like(to_file_order(canonical, self.image), self.image, path)


def sessions_of(case: Case, vi: VolumeInteraction, label: np.ndarray, args, size: int, box: bool) -> list[Session]:
    """The sessions of one followed rater: one per slice and class it marks (the track's classes); under the budget
    protocol also one per slice it leaves empty (an empty target: false positives there are errors a click should
    fix), about the class its click-free foreground takes. `box`: each marked session starts from its target's box."""
    classes = [None] if args.track == "binary" else [c for c in range(1, 6) if (label == c).any()]
    sessions, marked = [], set()
    for cls in classes:
        for z, mask in enumerate(case.planes(label, cls)):
            if mask.any():
                target = torch.from_numpy(resize_mask(mask, size)).to(vi.embeddings.device)
                sessions.append(vi.session(z, 1 if cls is None else cls, target, box=box))
                marked.add(z)
    if args.protocol == "budget":
        empty = torch.zeros(size, size, dtype=torch.bool, device=vi.embeddings.device)
        sessions += [vi.session(z, default_class(label, args.track), empty) for z in range(case.z) if z not in marked]
    return sessions


def default_class(label: np.ndarray, track: str) -> int:
    """The class of a slice's foreground without a session of its own: 1 (binary track), else the followed rater's
    most frequent class (the labels choose it)."""
    return 1 if track == "binary" else int(np.bincount(label[label > 0], minlength=6).argmax() or 1)


def follow(
    case: Case, vi: VolumeInteraction, label: np.ndarray, args, rounds: int, size: int, box: bool, memory=None
) -> tuple:
    """One followed rater: the sessions of the track, the protocol's clicks -> (final display planes uint8, the
    case's Dice and NSD (foreground, `NSD_TOLERANCE` mm) after each click count: [(clicks, Dice, NSD)]). `memory`: a
    CaseMemory (a model with a session memory), fresh per rater."""
    sessions = sessions_of(case, vi, label, args, size, box)
    default_cls = default_class(label, args.track)
    dice_curve: list[tuple[int, float, float]] = []

    def volume() -> list[np.ndarray]:
        by_slice: dict[int, list] = {}
        for s in sessions:
            by_slice.setdefault(s.z, []).append(s)
        planes = []
        for z in range(case.z):
            found = by_slice.get(z)
            if not found:
                probs, classes_z = vi.click_free[z][None], [default_cls]
            else:
                probs, classes_z = torch.stack([s.probs for s in found]), [s.cls for s in found]
            full = torch.stack([upsample(p, case.height, case.width) for p in probs]).cpu()
            best, which = full.max(0)
            plane = np.asarray(classes_z, np.uint8)[which.numpy()] * (best > 0.5).numpy()
            planes.append(plane.astype(np.uint8))
        return planes

    reference = np.stack([display_slice(label, z) for z in range(case.z)])

    def record(clicks: int) -> None:
        pred = np.stack(volume())
        score = (plain_dice if args.track == "binary" else challenge_dice)(pred, reference.astype(np.uint8))
        nsd = surface_dice_case(pred > 0, reference > 0, np.diag([*case.display_spacing, 1.0]))
        dice_curve.append((clicks, score, nsd))

    if args.protocol == "marked":
        run_marked(vi, sessions, rounds, record, memory)
    else:
        run_budget(vi, sessions, args.budget, record, memory)
    return volume(), dice_curve


def noc(curve: list[tuple[int, float, float]], budget: int) -> dict[str, float]:
    """Clicks to reach each Dice threshold (the budget when never reached); with at least AUC_CLICKS clicks, the CVPR
    2025 challenge's DSC_AUC / NSD_AUC (trapezoid over the predictions after 1..AUC_CLICKS clicks) and DSC_Final /
    NSD_Final (after AUC_CLICKS clicks), docs/metrics.md#interactive."""
    out: dict[str, float] = {f"NoC@{t:.2f}": next((c for c, d, _ in curve if d >= t), budget) for t in NOC_THRESHOLDS}
    chosen = [(d, n) for c, d, n in curve if 1 <= c <= AUC_CLICKS]
    if len(chosen) == AUC_CLICKS:
        scores = torch.tensor(chosen).T  # 2 x AUC_CLICKS: Dice, NSD
        for name, row in zip(("DSC", "NSD"), scores):
            out[f"{name}_AUC"], out[f"{name}_Final"] = float(click_auc(row[None])[0]), float(row[-1])
    return out


def refuse_unused_flags(argv: Sequence[str] | None) -> None:
    """A training or validation flag named on predict.py's command line (it would change nothing): one line."""
    own: list[str] = []

    def parser() -> OneLineParser:
        built = build_parser("predict.py")
        own[:] = predict_flags(built)
        return built

    unused = sorted(given_flags(argv, parser) - set(own) - set(USED_FLAGS))
    if unused:
        raise InputError(
            f"argument -{unused[0]}: not used by predict.py (it uses -{', -'.join(USED_FLAGS)} and its own flags: "
            f"-{', -'.join(own)})"
        )


def trained_first_prompt(checkpoint) -> str:
    """The `-first_prompt` a checkpoint of this project was trained with ('none' for other weights)."""
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    return str(args.get("first_prompt") or "none") if isinstance(args, Mapping) else "none"


def rater_folders(raters: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{folder: the cases it lacks} for follow_<id> (cases the rater did not annotate) and follow_rank<k> (cases of
    fewer than k raters), given each case's rater ids in order."""
    ids = sorted({r for found in raters.values() for r in found}, key=natural_key)
    ranks = max((len(found) for found in raters.values()), default=0)
    out = {f"follow_{r}": [c for c, found in raters.items() if r not in found] for r in ids}
    out.update({f"follow_rank{k}": [c for c, found in raters.items() if len(found) < k] for k in range(1, ranks + 1)})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    refuse_unused_flags(argv)
    setup: Setup = make_config(argv, "demo", prog="predict.py", extra_flags=predict_flags)
    cfg, args = setup.config, setup.extra
    if not cfg.model.weights:
        raise InputError("-weights is required: the checkpoint to predict with")
    if "data_path" not in setup.explicit:
        raise InputError("-data_path is required: the folder of cases (<case>/image.nii.gz, label_annot_<id>.nii.gz)")
    if args.budget < 0:
        raise InputError(f"-budget: must not be negative, got {args.budget}")
    check_window(args.window_level, args.window_width)
    data, run = Path(cfg.data.data_path), RunFolder(args.out)  # RunFolder refuses an -out it cannot write
    cases = case_folders(data)
    if not cases:
        raise InputError(f"-data_path {data}: no case folders (<case>/image.nii.gz, <case>/label_annot_<id>.nii.gz)")
    first_prompt = trained_first_prompt(setup.files.get(cfg.model.weights))
    device = choose_device(cfg.device)
    model, reports = build_model_from_config(cfg, setup.files)
    model.to(device).eval()
    for line in setup.notes + [r.summary() for r in reports]:
        print(line)
    if first_prompt == "click":
        print("the checkpoint was trained with -first_prompt click; here every session starts without a click")
    size, rows, counts, final, raters = cfg.model.image_size, [], [], [], {}
    budget = args.budget if args.protocol == "budget" else cfg.loop.clicks - 1
    box = first_prompt == "box"
    memory = cfg.loop.session_memory if model.memory is not None else "none"
    tag = {"protocol": args.protocol, "track": args.track, "first_prompt": "box" if box else "none", "memory": memory}
    print(
        f"predicting {len(cases)} cases of {data} with {cfg.model.weights} ({args.protocol} protocol, "
        f"{args.track} track{', a box of the followed mask first' if box else ''}) -> {run.out}"
    )
    with run:
        for folder in cases:
            start = time.time()
            case = Case(folder, model, size, device, args.window_level, args.window_width)
            vi = VolumeInteraction(model, case.embeddings)
            raters[case.name] = [rater for rater, _ in case.raters]
            if any(r.startswith("rank") for r in raters[case.name]):
                raise InputError(f"{folder}: a rater id starting with 'rank' would share follow_rank<k>'s folder names")
            for k, (rater, label) in enumerate(case.raters):
                case_memory = None
                if memory != "none":  # the case is a session: fresh for every followed rater
                    case_memory = CaseMemory(vi, case.inputs, cfg.loop.memory_window, memory)
                planes, curve = follow(case, vi, label, args, cfg.loop.clicks, size, box, case_memory)
                written = run.tmp / f"follow_{rater}" / f"{case.name}.nii.gz"
                case.write(planes, written)
                copies = [run.tmp / f"follow_rank{k + 1}" / written.name]
                if args.save_sets:
                    copies.append(run.tmp / "sets" / f"{case.name}_pred_s{k}.nii.gz")
                for copy in copies:
                    copy.parent.mkdir(exist_ok=True)
                    shutil.copyfile(written, copy)
                rows += [
                    {"case": case.name, "followed": rater, **tag, "clicks": c, "Dice": d, "NSD": n} for c, d, n in curve
                ]
                counts.append({"case": case.name, "followed": rater, **tag, **noc(curve, budget)})
                final.append(curve[-1][1])  # after the last click
            print(f"{case.name}: {len(case.raters)} raters, {case.z} slices ({time.time() - start:.1f} s)")
        write_csv(rows, run.tmp / "interaction.csv")
        write_csv(counts, run.tmp / "noc.csv")
        lacking = rater_folders(raters)
        settings = {"weights": str(cfg.model.weights), "data_path": str(data), **tag, "budget": budget}
        settings.update(window_level=args.window_level, window_width=args.window_width)
        run.publish(settings, raters, lacking)
    print(
        f"mean Dice against the followed rater after the last click: {np.mean(final):.4f}"
        f" ({args.protocol} protocol, {args.track} track, memory {memory}) -> {run.out}"
    )
    complete = [f for f, missing in lacking.items() if not missing]
    print(f"complete submissions (a prediction for every case): {', '.join(complete)}")
    for folder, missing in lacking.items():
        if missing:
            print(f"incomplete: {folder} lacks {len(missing)} case(s), e.g. {missing[0]} (its rater did not annotate)")
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run_command(main)
