"""Image-quality criteria of a lumbar spine radiograph, measured on its label map.

Each criterion is a small function (Radiograph, rule) -> CriterionResult: the measured value, the
threshold it was held to, pass/fail and one sentence of reason. Thresholds live in qc_rules.json
(per position) and are documented with their formulas and sources in the README section
"lumbar-xray-qc". Geometry is measured in mm (the image's pixel spacing), x across the image,
y down the rows. A criterion that needs a structure the label map does not have (e.g. pedicles on
a body-only labelling) is "not measurable" (passed None) and does not decide the verdict.

Label roles come from the label names: L1..L5, vertebra, vertebral_body and lumbar_vertebra are
vertebral bodies (the lumbar column), pedicle and spinous_process what their names say; other
labels (thoracic_vertebra, sacrum) are not part of the lumbar column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
from scipy import ndimage

LEVELS = ("L1", "L2", "L3", "L4", "L5")
BODY_NAMES = frozenset({"vertebra", "vertebral_body", "lumbar_vertebra", *LEVELS})
PEDICLE_NAMES = frozenset({"pedicle", "pedicles"})
SPINOUS_NAMES = frozenset({"spinous_process", "spinous"})
# Seen from above, at a projection angle t the pedicle pair's midpoint lies b_p sin t and the
# spinous process b_s sin t behind the body centre, the pedicles a cos t either side, so the
# asymmetry ratio is K tan t with K = (b_s - b_p) / a. Mean lumbar geometry (a 16 mm, b_p 21 mm,
# b_s 49 mm) gives 1.8; projected label maps, where a pedicle hides part of the spinous process,
# give 2.1 at 45 degrees (fitted on the lumbar-xray phantom's qualified obliques), used here.
SPINOUS_TO_PEDICLE_K = 2.1
LATERAL_FROM_DEG = 60.0  # estimated angles from here on are called LAT (a rotated lateral included)


@dataclass(frozen=True)
class LabelRoles:
    body: tuple[int, ...]
    pedicle: tuple[int, ...]
    spinous: tuple[int, ...]
    levels: dict[str, int] = field(default_factory=dict)  # level name -> value, where labelled per level

    @property
    def column(self) -> tuple[int, ...]:
        return self.body + self.pedicle + self.spinous


def roles_from_names(label_values: Mapping[str, int]) -> LabelRoles:
    by_role: dict[str, list[int]] = {"body": [], "pedicle": [], "spinous": []}
    for name, value in label_values.items():
        key = name.strip().lower()
        role = "body" if key in {n.lower() for n in BODY_NAMES} else \
            "pedicle" if key in PEDICLE_NAMES else "spinous" if key in SPINOUS_NAMES else None
        if role is not None and value != 0:
            by_role[role].append(int(value))
    levels = {name.upper(): int(v) for name, v in label_values.items() if name.upper() in LEVELS}
    return LabelRoles(tuple(by_role["body"]), tuple(by_role["pedicle"]), tuple(by_role["spinous"]), levels)


@dataclass(frozen=True)
class Radiograph:
    """One 2D radiograph as the criteria see it."""

    labels: np.ndarray  # (rows, cols) label values
    spacing: tuple[float, float]  # (row, col) mm
    roles: LabelRoles
    image: np.ndarray | None = None  # (rows, cols) stored values, for exposure

    def mask(self, values: tuple[int, ...]) -> np.ndarray:
        return np.isin(self.labels, values) if values else np.zeros(self.labels.shape, bool)


@dataclass(frozen=True)
class CriterionResult:
    criterion: str
    value: float | None  # None: not measurable on this label map
    threshold: str  # e.g. ">= 5 mm"
    passed: bool | None
    reason: str
    unit: str = ""
    drawing: dict = field(default_factory=dict)  # what an overlay draws: points/lines in pixels

    def to_dict(self) -> dict:
        return {"value": None if self.value is None else round(float(self.value), 4), "threshold": self.threshold,
                "passed": None if self.passed is None else bool(self.passed), "reason": self.reason, "unit": self.unit}


def not_measurable(name: str, threshold: str, why: str) -> CriterionResult:
    return CriterionResult(name, None, threshold, None, f"not measurable: {why}")


# ---------------------------------------------------------------- shared measurements
def column_midline(radiograph: Radiograph) -> tuple[float, float] | None:
    """x = a + b y (mm): the lumbar column's long axis (the principal axis of its pixels nearer to
    the vertical, through their centroid); None without a column."""
    rows, cols = np.nonzero(radiograph.mask(radiograph.roles.column))
    if rows.size < 3:
        return None
    sy, sx = radiograph.spacing
    points = np.column_stack([rows * sy, cols * sx])
    centre = points.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((points - centre).T))
    axis = max(vectors.T, key=lambda v: abs(v[0]))  # (dy, dx) of the more vertical principal axis
    b = float(axis[1] / axis[0])
    return float(centre[1] - b * centre[0]), b


def detrended_x(radiograph: Radiograph, mask: np.ndarray, line: tuple[float, float]) -> np.ndarray:
    """Each pixel's horizontal distance (mm) from the column midline at its own row."""
    rows, cols = np.nonzero(mask)
    sy, sx = radiograph.spacing
    return cols * sx - (line[0] + line[1] * rows * sy)


def pedicle_asymmetry(radiograph: Radiograph) -> float | None:
    """(spinous centroid - midpoint of the pedicle pair) / half the pedicle separation, all measured
    from the column midline: 0 in a true AP, K tan(angle) at a projection angle (see K)."""
    line = column_midline(radiograph)
    pedicle, spinous = radiograph.mask(radiograph.roles.pedicle), radiograph.mask(radiograph.roles.spinous)
    if line is None or pedicle.sum() < 4 or spinous.sum() < 2:
        return None
    px, sx = detrended_x(radiograph, pedicle, line), detrended_x(radiograph, spinous, line)
    split = px.mean()
    left, right = px[px < split], px[px >= split]
    if left.size == 0 or right.size == 0:
        return None
    half = max((right.mean() - left.mean()) / 2, 1e-3)
    return float((sx.mean() - (left.mean() + right.mean()) / 2) / half)


def projection_angle(radiograph: Radiograph) -> float | None:
    """Estimated rotation of the trunk from AP (degrees, 0..90) from the pedicle asymmetry."""
    ratio = pedicle_asymmetry(radiograph)
    return None if ratio is None else math.degrees(math.atan(abs(ratio) / SPINOUS_TO_PEDICLE_K))


def infer_position(radiograph: Radiograph) -> str | None:
    """AP, OBL or LAT from the estimated projection angle (22.5 and 60 degree boundaries: in a
    lateral the pedicles superimpose, and the ratio's small denominator makes the angle noisy)."""
    angle = projection_angle(radiograph)
    if angle is None:
        return None
    return "AP" if angle < 22.5 else "OBL" if angle < LATERAL_FROM_DEG else "LAT"


def anterior_bodies(radiograph: Radiograph) -> list[np.ndarray]:
    """In a lateral view, the vertebral bodies: per row, the run of body label that starts at the
    anterior edge (the side away from the spinous processes), split into bodies by the disc rows.
    Pixel masks, top to bottom."""
    body = radiograph.mask(radiograph.roles.body)
    spinous = radiograph.mask(radiograph.roles.spinous)
    if body.sum() == 0 or spinous.sum() == 0:
        return []
    posterior_right = np.nonzero(spinous)[1].mean() > np.nonzero(body)[1].mean()
    oriented = body if not posterior_right else body[:, ::-1]  # anterior edge at the right end
    front = np.zeros_like(oriented)
    for r in np.flatnonzero(oriented.any(axis=1)):
        cols = np.flatnonzero(oriented[r])
        start = cols.max()  # anterior-most pixel; walk back to the end of its run
        run_start = start
        while run_start - 1 >= 0 and oriented[r, run_start - 1]:
            run_start -= 1
        front[r, run_start:start + 1] = True
    front = front if not posterior_right else front[:, ::-1]
    labelled, count = ndimage.label(front)
    pieces = [labelled == i for i in range(1, count + 1)]
    big = [p for p in pieces if p.sum() * np.prod(radiograph.spacing) >= 100.0]  # >= 1 cm^2: a body
    return sorted(big, key=lambda p: np.nonzero(p)[0].mean())


# ---------------------------------------------------------------- the criteria
def field_of_view(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """Every lumbar level inside the image with a margin: the smaller distance (mm) from the lumbar
    column to the top and bottom borders (L1 and L5 whole; the side borders are the centring's
    concern, as transverse processes may leave a correctly centred oblique field), and every level
    present where levels are labelled."""
    margin = rule["min_margin_mm"]
    threshold = f">= {margin:g} mm"
    column = radiograph.mask(radiograph.roles.column)
    if not column.any():
        return CriterionResult("field_of_view", 0.0, threshold, False, "no lumbar vertebra in the label map", "mm")
    missing = [name for name, value in radiograph.roles.levels.items() if not (radiograph.labels == value).any()]
    rows, cols = np.nonzero(column)
    sy, sx = radiograph.spacing
    h = column.shape[0]
    gaps = {"top": rows.min() * sy, "bottom": (h - 1 - rows.max()) * sy}
    side = min(gaps, key=gaps.get)
    value = float(gaps[side])
    drawing = {"box": [int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())], "side": side}
    if missing:
        return CriterionResult("field_of_view", value, threshold, False,
                               f"level(s) {', '.join(missing)} outside the field of view", "mm", drawing)
    passed = value >= margin
    reason = (f"lumbar column {value:.1f} mm from the {side} border" +
              ("" if passed else f", closer than {margin:g} mm: a level may be cut"))
    return CriterionResult("field_of_view", value, threshold, passed, reason, "mm", drawing)


def centring(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """Horizontal distance of the column's middle from the image centre, as a share of the width."""
    limit = rule["max_offset"]
    threshold = f"<= {limit:g} of the width"
    line = column_midline(radiograph)
    if line is None:
        return not_measurable("centring", threshold, "no lumbar column in the label map")
    column = radiograph.mask(radiograph.roles.column)
    rows = np.flatnonzero(column.any(axis=1))
    sy, sx = radiograph.spacing
    middle_row = (rows.min() + rows.max()) / 2
    mid_x = line[0] + line[1] * middle_row * sy
    width_mm = column.shape[1] * sx
    value = abs(mid_x - width_mm / 2) / width_mm
    passed = value <= limit
    drawing = {"point": [float(middle_row), float(mid_x / sx)], "centre": [float(middle_row), column.shape[1] / 2]}
    reason = f"column middle {value:.0%} of the width off centre" + ("" if passed else f", more than {limit:.0%}")
    return CriterionResult("centring", float(value), threshold, passed, reason, "share", drawing)


def tilt(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """Angle between the column's midline (fitted through each row's middle) and the image's vertical."""
    limit = rule["max_deg"]
    threshold = f"<= {limit:g} deg"
    line = column_midline(radiograph)
    if line is None:
        return not_measurable("tilt", threshold, "no lumbar column in the label map")
    value = abs(math.degrees(math.atan(line[1])))
    passed = value <= limit
    rows = np.flatnonzero(radiograph.mask(radiograph.roles.column).any(axis=1))
    sy, sx = radiograph.spacing
    ends = [[float(r), float((line[0] + line[1] * r * sy) / sx)] for r in (rows.min(), rows.max())]
    reason = f"column tilted {value:.1f} deg from vertical" + ("" if passed else f", more than {limit:g} deg")
    return CriterionResult("tilt", value, threshold, passed, reason, "deg", {"line": ends})


def rotation(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """AP: the spinous processes midway between the pedicles; |asymmetry ratio| (see pedicle_asymmetry)."""
    limit = rule["max_asymmetry"]
    threshold = f"<= {limit:g}"
    ratio = pedicle_asymmetry(radiograph)
    if ratio is None:
        return not_measurable("rotation", threshold, "needs pedicles on both sides and spinous processes")
    value = abs(ratio)
    passed = value <= limit
    reason = (f"spinous processes {value:.2f} of the half pedicle distance off the pedicles' midpoint" +
              ("" if passed else ": the trunk is rotated"))
    return CriterionResult("rotation", value, threshold, passed, reason, "ratio")


def true_lateral(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """LAT: a rotated lateral shows the two halves of each body side by side (a double posterior
    contour), which widens the body's projection: median over bodies of depth / height (the
    long and short axes of each body mask)."""
    limit = rule["max_depth_to_height"]
    threshold = f"<= {limit:g}"
    bodies = anterior_bodies(radiograph)
    if len(bodies) < 2:
        return not_measurable("true_lateral", threshold, "fewer than two vertebral bodies found")
    ratios = []
    for body in bodies:
        rows, cols = np.nonzero(body)
        points = np.column_stack([rows * radiograph.spacing[0], cols * radiograph.spacing[1]])
        eigen = np.sort(np.linalg.eigvalsh(np.cov(points.T)))
        ratios.append(math.sqrt(eigen[1] / max(eigen[0], 1e-6)))
    value = float(np.median(ratios))
    passed = value <= limit
    reason = (f"vertebral bodies {value:.2f} times as deep as high" +
              ("" if passed else ": posterior body walls not superimposed, the patient is rotated"))
    return CriterionResult("true_lateral", value, threshold, passed, reason, "ratio")


def disc_spaces(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """LAT: the narrowest gap (mm) between neighbouring vertebral bodies; a closed space means the
    beam was not parallel to the end plates (or the disc has collapsed)."""
    limit = rule["min_gap_mm"]
    threshold = f">= {limit:g} mm"
    bodies = anterior_bodies(radiograph)
    if len(bodies) < 2:
        return not_measurable("disc_spaces", threshold, "fewer than two vertebral bodies found")
    scale = np.asarray(radiograph.spacing)
    gaps = []
    for upper, lower in zip(bodies, bodies[1:]):
        distance = ndimage.distance_transform_edt(~upper, sampling=scale)
        gaps.append(max(float(distance[lower].min()) - scale[0], 0.0))  # centre to centre -> edge to edge
    value = min(gaps)
    passed = value >= limit
    reason = f"narrowest disc space {value:.1f} mm" + ("" if passed else f", under {limit:g} mm: end plates overlap")
    return CriterionResult("disc_spaces", value, threshold, passed, reason, "mm")


def obliquity(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """OBL: the trunk's angle estimated from where the pedicles project within the vertebra
    (atan(|asymmetry| / K)), inside [min_deg, max_deg]."""
    low, high = rule["min_deg"], rule["max_deg"]
    threshold = f"{low:g}-{high:g} deg"
    angle = projection_angle(radiograph)
    if angle is None:
        return not_measurable("obliquity", threshold, "needs pedicles and spinous processes")
    passed = low <= angle <= high
    reason = f"estimated obliquity {angle:.0f} deg" + ("" if passed else f", outside {low:g}-{high:g} deg")
    return CriterionResult("obliquity", angle, threshold, passed, reason, "deg")


def exposure(radiograph: Radiograph, rule: Mapping[str, float]) -> CriterionResult:
    """Share of the column's pixels at the image's lowest or highest stored value (burnt out or
    saturated: under- or over-exposure leaves no contrast there)."""
    limit = rule["max_clipped"]
    threshold = f"<= {limit:g}"
    column = radiograph.mask(radiograph.roles.column)
    if radiograph.image is None or not column.any():
        return not_measurable("exposure", threshold, "needs the image and a lumbar column")
    values = radiograph.image[column]
    low, high = float(radiograph.image.min()), float(radiograph.image.max())
    value = float(np.mean((values <= low) | (values >= high))) if high > low else 1.0
    passed = value <= limit
    reason = f"{value:.1%} of the column clipped" + ("" if passed else f", more than {limit:.0%}: wrong exposure")
    return CriterionResult("exposure", value, threshold, passed, reason, "share")


Criterion = Callable[[Radiograph, Mapping[str, float]], CriterionResult]
# name -> (function, the thresholds its rule must give)
CRITERIA: dict[str, tuple[Criterion, tuple[str, ...]]] = {
    "field_of_view": (field_of_view, ("min_margin_mm",)),
    "centring": (centring, ("max_offset",)),
    "tilt": (tilt, ("max_deg",)),
    "rotation": (rotation, ("max_asymmetry",)),
    "true_lateral": (true_lateral, ("max_depth_to_height",)),
    "disc_spaces": (disc_spaces, ("min_gap_mm",)),
    "obliquity": (obliquity, ("min_deg", "max_deg")),
    "exposure": (exposure, ("max_clipped",)),
}
