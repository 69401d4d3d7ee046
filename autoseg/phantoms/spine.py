"""Vertebrae and vertebral columns built from analytic solids (shared by the spine phantoms).

A vertebra's local frame has axis 0 superior, axis 1 posterior and axis 2 to the patient's
left, with the origin in the middle of the vertebral body. Parts carry the vertebra's level and
a role ("body", "pedicle", "spinous", "posterior", "disc", "canal") so that each phantom can
derive its own labels. Sizes are adult averages in mm; `VertebraShape.scaled` varies them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from autoseg.phantoms.solids import Part, Solid, axial_rotation, coronal_rotation, sagittal_rotation, shelled

# Maps a cylinder's axis (local 0) onto a vertebra's posterior axis or its left axis.
_ALONG_POSTERIOR = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_ALONG_LEFT = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class VertebraShape:
    """Overall sizes of one vertebra in mm (full lengths, not half lengths)."""

    body_height: float
    body_depth: float  # anterior-posterior
    body_width: float  # left-right
    canal_depth: float
    canal_width: float
    pedicle_width: float
    spinous_length: float
    spinous_height: float
    spinous_tilt_deg: float  # how far the spinous process slopes downward
    transverse_length: float  # each side, beyond the pedicle
    cortex: float

    def scaled(self, factor: float) -> "VertebraShape":
        """Every length times `factor` (angles unchanged)."""
        values = {k: v * factor for k, v in self.__dict__.items() if k != "spinous_tilt_deg"}
        return replace(self, **values)


CERVICAL = VertebraShape(14.0, 16.0, 22.0, 14.0, 24.0, 5.0, 18.0, 10.0, 20.0, 7.0, 1.2)
THORACIC = VertebraShape(21.0, 26.0, 32.0, 16.0, 17.0, 7.0, 38.0, 10.0, 45.0, 24.0, 1.5)
LUMBAR = VertebraShape(27.0, 33.0, 45.0, 17.0, 23.0, 9.0, 32.0, 22.0, 8.0, 28.0, 1.8)


@dataclass(frozen=True)
class Pose:
    """Where a vertebra sits: body center (world mm, z y x) and local-to-world rotation."""

    center: np.ndarray
    rotation: np.ndarray

    def point(self, local) -> np.ndarray:
        return self.center + self.rotation @ np.asarray(local, float)


def vertebra_parts(shape: VertebraShape, pose: Pose, level: str) -> list[Part]:
    """Body (cortical shell + cancellous core), pedicles, laminae, transverse, articular and spinous processes."""
    body = _solid(pose, "cylinder", (0, 0, 0), (shape.body_height / 2, shape.body_depth / 2, shape.body_width / 2))
    parts = shelled(body, shape.cortex, level, "body")
    for side in (-1.0, 1.0):
        parts += _pedicle(shape, pose, side, level)
        parts += _arch(shape, pose, side, level)
    parts.append(_spinous(shape, pose, level))
    return parts


def _solid(pose: Pose, kind: str, local_center, semi_axes, local_rotation=None) -> Solid:
    rotation = pose.rotation if local_rotation is None else pose.rotation @ local_rotation
    return Solid.make(kind, pose.point(local_center), semi_axes, rotation)


def _pedicle_x(shape: VertebraShape) -> float:
    return shape.canal_width / 2 + shape.pedicle_width / 2


def _pedicle(shape: VertebraShape, pose: Pose, side: float, level: str) -> list[Part]:
    """A short cortical tube from the back of the body; its ring is the AP view's 'eye'."""
    length = 0.55 * shape.canal_depth + 3.0
    center = (0.0, shape.body_depth / 2 + length / 2 - 2.0, side * _pedicle_x(shape))
    converge = axial_rotation(side * 12.0)  # pedicles diverge going back, converge toward the body
    semi = (length / 2, 0.3 * shape.body_height, shape.pedicle_width / 2)
    solid = _solid(pose, "cylinder", center, semi, converge @ _ALONG_POSTERIOR)
    return shelled(solid, max(shape.cortex, 0.3 * shape.pedicle_width), level, "pedicle")


def _arch(shape: VertebraShape, pose: Pose, side: float, level: str) -> list[Part]:
    """Lamina, transverse process and superior/inferior articular processes of one side."""
    y_root = shape.body_depth / 2 + 0.55 * shape.canal_depth
    x_root = side * _pedicle_x(shape)
    y_back = shape.body_depth / 2 + shape.canal_depth + 2.0
    half_len = 0.5 * np.hypot(y_back - y_root, x_root) + 2.0
    turn = axial_rotation(np.degrees(np.arctan2(-x_root, y_back - y_root)))
    lamina_semi = (0.3 * shape.body_height, half_len, 0.12 * shape.canal_width + 1.0)
    lamina = _solid(pose, "box", (0.0, (y_root + y_back) / 2, x_root / 2), lamina_semi, turn)
    tp_center = (0.0, y_root, side * (_pedicle_x(shape) + shape.pedicle_width / 2 + shape.transverse_length / 2))
    tp_radius = 0.17 * shape.body_height
    tp_semi = (shape.transverse_length / 2 + 2.0, tp_radius, 0.8 * tp_radius)
    transverse = _solid(pose, "cylinder", tp_center, tp_semi, _ALONG_LEFT)
    facet_semi = (0.28 * shape.body_height, 0.2 * shape.canal_depth + 1.0, 0.5 * shape.pedicle_width + 1.0)
    facets = [
        _solid(pose, "ellipsoid", (dz * 0.5 * shape.body_height, y_root + 2.0, x_root + side * 1.0), facet_semi)
        for dz in (-1.0, 1.0)
    ]
    return [Part(s, "mixed_bone", level, "posterior") for s in [lamina, transverse, *facets]]


def _spinous(shape: VertebraShape, pose: Pose, level: str) -> Part:
    """Spinous process: sloping plate behind the laminae, rounded in the sagittal plane."""
    tilt = np.radians(shape.spinous_tilt_deg)
    start = np.array([0.0, shape.body_depth / 2 + shape.canal_depth + 1.0, 0.0])
    direction = np.array([-np.sin(tilt), np.cos(tilt), 0.0])
    center = start + direction * shape.spinous_length / 2
    # cylinder axis along left; local 1 along the process, local 2 across it (in the sagittal plane)
    across = np.array([np.cos(tilt), np.sin(tilt), 0.0])
    local_rotation = np.column_stack([[0.0, 0.0, 1.0], direction, across])
    semi = (0.12 * shape.canal_width + 1.0, shape.spinous_length / 2 + 1.0, shape.spinous_height / 2)
    return Part(_solid(pose, "cylinder", center, semi, local_rotation), "mixed_bone", level, "spinous")


def column_rotation(sagittal_deg: float, coronal_deg: float = 0.0, axial_deg: float = 0.0) -> np.ndarray:
    """Orientation of one vertebra: lordosis/kyphosis tilt, then side bend, then axial twist."""
    return sagittal_rotation(sagittal_deg) @ coronal_rotation(coronal_deg) @ axial_rotation(axial_deg)


def stack_poses(
    base: Pose, heights: list[float], gaps: list[float], rotations: list[np.ndarray], upward: bool = True
) -> list[Pose]:
    """Chain vertebrae from `base` (the first), each `gaps[i-1]` mm of disc away from the previous.

    heights[i] is element i's body height; rotations[0] is ignored (base has its own).
    """
    sign = 1.0 if upward else -1.0
    poses = [base]
    for i in range(1, len(heights)):
        prev = poses[-1]
        step_prev = prev.rotation[:, 0] * (heights[i - 1] / 2 + gaps[i - 1] / 2)
        step_next = rotations[i][:, 0] * (gaps[i - 1] / 2 + heights[i] / 2)
        poses.append(Pose(prev.center + sign * (step_prev + step_next), rotations[i]))
    return poses


def disc_parts(upper: Pose, lower: Pose, upper_shape: VertebraShape, lower_shape: VertebraShape) -> list[Part]:
    """Intervertebral disc filling the gap between two bodies (painted before the bones)."""
    center = (upper.center + lower.center) / 2
    rotation = upper.rotation + lower.rotation
    u, _, vt = np.linalg.svd(rotation)  # nearest rotation to the average of the two
    rotation = u @ vt
    gap = float(np.linalg.norm(upper.center - lower.center)) - (upper_shape.body_height + lower_shape.body_height) / 2
    depth = (upper_shape.body_depth + lower_shape.body_depth) / 2
    width = (upper_shape.body_width + lower_shape.body_width) / 2
    semi = (gap / 2 + 2.0, 0.47 * depth, 0.47 * width)
    return [Part(Solid.make("cylinder", center, semi, rotation), "disc", "", "disc")]


def canal_parts(pose: Pose, shape: VertebraShape, gap: float) -> list[Part]:
    """Fluid-filled thecal sac inside the vertebral canal (painted before the bones)."""
    center = (0.0, shape.body_depth / 2 + shape.canal_depth / 2, 0.0)
    semi = (shape.body_height / 2 + gap / 2 + 1.0, 0.4 * shape.canal_depth, 0.4 * shape.canal_width)
    return [Part(_solid(pose, "cylinder", center, semi), "csf", "", "canal")]


def column_parts(shapes: list[VertebraShape], poses: list[Pose], levels: list[str], gaps: list[float]) -> list[Part]:
    """Discs and canal first, then all vertebrae, so bone always wins where they touch."""
    soft: list[Part] = []
    for i in range(len(poses) - 1):
        soft += disc_parts(poses[i + 1], poses[i], shapes[i + 1], shapes[i])
    for i, pose in enumerate(poses):
        soft += canal_parts(pose, shapes[i], gaps[min(i, len(gaps) - 1)] if gaps else 0.0)
    bones: list[Part] = []
    for shape, pose, level in zip(shapes, poses, levels):
        bones += vertebra_parts(shape, pose, level)
    return soft + bones


def rib_part(
    root, semi_yx: tuple[float, float], arc: tuple[float, float], side: float, tilt_deg: float, half_height: float = 5.0
) -> Part:
    """A rib: an elliptic arc starting at `root` (near its transverse process) and curving forward.

    `semi_yx` are the rib ellipse's semi axes (posterior, left); `arc` the angles (radians from
    straight back) where the rib starts and ends; `tilt_deg` drops the anterior end, as real
    ribs slope down toward the front. `side` is +1 for the patient's left, -1 for the right.
    """
    a, b = semi_yx
    tilt = sagittal_rotation(tilt_deg)
    start_local = np.array([0.0, a * np.cos(arc[0]), side * b * np.sin(arc[0])])
    center = np.asarray(root, float) - tilt @ start_local
    angles = arc if side > 0 else (-arc[1], -arc[0])
    ring = Solid.make("ring", center, (half_height, a, b), tilt, thickness=0.8 * half_height, arc=angles)
    return Part(ring, "mixed_bone", "", "rib")
