"""Level consistency of a predicted vertebra label map: one component per level, levels in
head-to-foot order along the patient axis, no level twice.

Level values are given in anatomical order (e.g. L1..L5 -> 1..5). The check works in world
coordinates (the image's direction matrix applied), so the order holds whatever the scan's
orientation; the patient's head is +z in the LPS frame that ITK images use.

Repairs, done only where the answer is unambiguous:

- fragments: components much smaller than a vertebra (`fragment_fraction` of the median level's
  main component) go to the level they touch most, or to background when they touch none;
- order: when the remaining components are out of order or a level appears twice, the components
  are renumbered, head to foot, with the run of consecutive levels that keeps the most predicted
  labels; this is unambiguous when exactly one run keeps the most. More components than levels
  (e.g. a sixth lumbar vertebra) or a tie is flagged and left as predicted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cc3d
import numpy as np
from scipy import ndimage

from autoseg.io import Geometry

MAX_LISTED = 5  # problems and repairs listed per case; the rest are counted


@dataclass(frozen=True)
class Component:
    index: int  # cc3d component id
    value: int  # the level's label value
    voxels: int
    superior_mm: float  # world position along the patient's head axis (larger: nearer the head)
    box: tuple[slice, ...]  # its bounding box


@dataclass(frozen=True)
class LevelCheck:
    labels: np.ndarray  # the repaired (or unchanged) label map
    status: str  # "consistent", "repaired" or "flagged"
    problems: tuple[str, ...]  # what was wrong with the prediction
    repairs: tuple[str, ...]  # what was changed


def world_points(indices_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Voxel indices (N, 3) in numpy order -> world points (N, 3) in mm, ITK (x, y, z) order."""
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    scaled = np.asarray(indices_zyx, dtype=float)[:, ::-1] * np.asarray(geometry.spacing, dtype=float)
    return np.asarray(geometry.origin, dtype=float) + scaled @ direction.T


def _components(labels: np.ndarray, values: Sequence[int], geometry: Geometry) -> tuple[np.ndarray, list[Component]]:
    """Connected components (26-neighbourhood) of every level, each with its value, size and height."""
    levels = np.where(np.isin(labels, values), labels, 0)
    ids = cc3d.connected_components(levels, connectivity=26)
    stats = cc3d.statistics(ids)
    present = [i for i in range(1, len(stats["voxel_counts"])) if stats["voxel_counts"][i] > 0]
    if not present:
        return ids, []
    component_values = ndimage.maximum(levels, labels=ids, index=present)
    heights = world_points(np.asarray(stats["centroids"], dtype=float)[present], geometry)[:, 2]
    return ids, [Component(i, int(v), int(stats["voxel_counts"][i]), float(h), stats["bounding_boxes"][i])
                 for i, v, h in zip(present, component_values, heights)]


def _name(value: int, names: dict[int, str]) -> str:
    return names.get(value, str(value))


def _reassign_fragments(labels: np.ndarray, ids: np.ndarray, fragments: list[Component], values: Sequence[int],
                        names: dict[int, str]) -> list[str]:
    """Each fragment goes to the level it touches most (face neighbours), else to background; the
    work stays inside each fragment's box, so thousands of specks (an untrained model) stay cheap."""
    repairs = []
    bodies = np.where(np.isin(ids, [f.index for f in fragments]), 0, labels)  # fragments never adopt fragments
    for fragment in sorted(fragments, key=lambda c: c.voxels):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in fragment.box)
        mask = ids[box] == fragment.index
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
        local = labels[box]
        touching = bodies[box][ring]
        touching = touching[np.isin(touching, values) & (touching != fragment.value)]
        target = int(np.bincount(touching).argmax()) if touching.size else 0
        local[mask] = target
        where = f"given to {_name(target, names)}" if target else "removed"
        repairs.append(f"{_name(fragment.value, names)}: a fragment of {fragment.voxels} voxels {where}")
    return _shortened(repairs)


def _shortened(lines: list[str]) -> list[str]:
    """At most MAX_LISTED lines, then how many more (a report stays readable for a noisy prediction)."""
    if len(lines) <= MAX_LISTED:
        return lines
    return lines[:MAX_LISTED] + [f"... and {len(lines) - MAX_LISTED} more"]


def _best_run(sequence: list[int], values: Sequence[int]) -> list[int] | None:
    """The consecutive run of levels agreeing most with `sequence` (head to foot); None on a tie."""
    n = len(sequence)
    scores = []
    for start in range(len(values) - n + 1):
        run = list(values[start:start + n])
        scores.append((sum(a == b for a, b in zip(run, sequence)), run))
    best = max(score for score, _ in scores)
    winners = [run for score, run in scores if score == best]
    return winners[0] if len(winners) == 1 else None


def check_levels(labels: np.ndarray, geometry: Geometry, values: Sequence[int], names: dict[int, str] | None = None,
                 fragment_fraction: float = 0.2) -> LevelCheck:
    """Check and, where unambiguous, repair a label map whose `values` are levels in head-to-foot order."""
    names = names or {}
    labels = np.array(labels, copy=True)
    ids, components = _components(labels, values, geometry)
    if not components:
        return LevelCheck(labels, "consistent", (), ())
    main = {}
    for c in components:
        main[c.value] = max(main.get(c.value, 0), c.voxels)
    threshold = fragment_fraction * float(np.median(list(main.values())))
    fragments = [c for c in components if c.voxels < threshold]
    problems = _shortened([f"{_name(c.value, names)}: a separate fragment of {c.voxels} voxels" for c in fragments])
    repairs = _reassign_fragments(labels, ids, fragments, values, names)
    bodies = sorted((c for c in components if c.voxels >= threshold), key=lambda c: -c.superior_mm)
    sequence = [c.value for c in bodies]
    order = [list(values).index(v) for v in sequence]
    duplicated = sorted({v for v in sequence if sequence.count(v) > 1})
    problems += [f"{_name(v, names)} appears {sequence.count(v)} times" for v in duplicated]
    if order != sorted(order) and not duplicated:
        problems.append("levels out of head-to-foot order: " + ", ".join(_name(v, names) for v in sequence))
    if not duplicated and order == sorted(order):
        return LevelCheck(labels, "repaired" if repairs else "consistent", tuple(problems), tuple(repairs))
    if len(bodies) > len(values):
        problems.append(f"{len(bodies)} vertebrae for {len(values)} levels (transitional anatomy?)")
        return LevelCheck(labels, "flagged", tuple(problems), tuple(repairs))
    run = _best_run(sequence, values)
    if run is None:
        problems.append("renumbering is ambiguous: several runs of levels fit equally well")
        return LevelCheck(labels, "flagged", tuple(problems), tuple(repairs))
    for component, value in zip(bodies, run):
        labels[ids == component.index] = value
    repairs.append("renumbered head to foot: " + ", ".join(f"{_name(a, names)}->{_name(b, names)}"
                                                            for a, b in zip(sequence, run) if a != b))
    return LevelCheck(labels, "repaired", tuple(problems), tuple(repairs))


def level_measurements(labels: np.ndarray, geometry: Geometry, values: Sequence[int],
                       names: dict[int, str]) -> dict[str, dict[str, float | list[float]]]:
    """Per present level: volume in mm^3 and centroid in world mm (ITK x, y, z)."""
    voxel_volume = float(np.prod(geometry.spacing))
    found = {}
    for value in values:
        indices = np.argwhere(labels == value)
        if indices.size == 0:
            continue
        centroid = world_points(indices.mean(axis=0)[None], geometry)[0]
        found[_name(value, names)] = {"volume_mm3": round(len(indices) * voxel_volume, 2),
                                      "centroid_mm": [round(float(c), 2) for c in centroid]}
    return found
