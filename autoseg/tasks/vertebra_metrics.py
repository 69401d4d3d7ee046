"""Vertebra identification: is each reference vertebra found, with the right level, where it is?

A reference level counts as identified when the prediction holds that level, its predicted
centroid is the predicted centroid closest to the reference centroid (of every predicted level),
and the two are at most `max_distance_mm` (20 mm) apart: the rule of the VerSe challenge.
Centroids are voxel means in world millimetres. Per-vertebra Dice and HD95 are the generic
evaluation's per-class figures (autoseg/evaluation.py); these add what overlap cannot say.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from autoseg.io import Geometry
from autoseg.tasks.levels import world_points

MAX_DISTANCE_MM = 20.0


def centroids_mm(labels: np.ndarray, geometry: Geometry, values: Sequence[int]) -> dict[int, np.ndarray]:
    """Label value -> world centroid (x, y, z) mm, for the values present."""
    found = {}
    for value in values:
        indices = np.argwhere(labels == value)
        if indices.size:
            found[int(value)] = world_points(indices.mean(axis=0)[None], geometry)[0]
    return found


def identification(predicted: dict[int, np.ndarray], reference: dict[int, np.ndarray],
                   max_distance_mm: float = MAX_DISTANCE_MM) -> dict[int, dict[str, Any]]:
    """Per reference level: identified (bool) and the distance to its predicted centroid (NaN if absent)."""
    result = {}
    for value, ref in reference.items():
        if value not in predicted:
            result[value] = {"identified": False, "distance_mm": math.nan}
            continue
        distances = {v: float(np.linalg.norm(c - ref)) for v, c in predicted.items()}
        own = distances[value]
        closest = min(distances, key=lambda v: (distances[v], v != value))
        result[value] = {"identified": closest == value and own <= max_distance_mm, "distance_mm": own}
    return result


def case_identification(pred: np.ndarray, ref: np.ndarray, geometry: Geometry, values: Sequence[int],
                        names: dict[int, str], max_distance_mm: float = MAX_DISTANCE_MM) -> dict[str, Any]:
    """One case: per level identified / centroid distance, the case's identification rate and mean distance."""
    per_level = identification(centroids_mm(pred, geometry, values), centroids_mm(ref, geometry, values), max_distance_mm)
    named = {names.get(v, str(v)): found for v, found in sorted(per_level.items())}
    distances = [f["distance_mm"] for f in per_level.values() if not math.isnan(f["distance_mm"])]
    return {"levels": named,
            "identification_rate": (sum(f["identified"] for f in per_level.values()) / len(per_level)
                                    if per_level else math.nan),
            "mean_centroid_distance_mm": float(np.mean(distances)) if distances else math.nan}


def summarize_identification(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pooled over cases: identification rate (identified / reference vertebrae), mean centroid
    distance over the vertebrae both hold, and the rate per level."""
    per_level: dict[str, list[bool]] = {}
    distances: list[float] = []
    for case in cases.values():
        for name, found in case["levels"].items():
            per_level.setdefault(name, []).append(bool(found["identified"]))
            if not math.isnan(found["distance_mm"]):
                distances.append(found["distance_mm"])
    pooled = [hit for hits in per_level.values() for hit in hits]
    return {"identification_rate": sum(pooled) / len(pooled) if pooled else math.nan,
            "mean_centroid_distance_mm": float(np.mean(distances)) if distances else math.nan,
            "vertebrae": len(pooled),
            "identification_rate_per_level": {name: sum(h) / len(h) for name, h in per_level.items()},
            "max_distance_mm": MAX_DISTANCE_MM}
