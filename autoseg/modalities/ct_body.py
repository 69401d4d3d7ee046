"""The patient's body in a CT volume (HU), apart from the table, pads and the air around them.

    body = body_mask(hu, spacing_zyx)            # bool, the volume's shape
    hu_without_table = np.where(body, hu, AIR_HU)

Steps: voxels above `threshold_hu` (tissue; foam pads and air stay below) -> in-plane erosion by
`opening_mm`, which cuts the thin bridges where the patient lies on the table (the table is a
plate a few mm thick, so it detaches before the body does) -> the largest 3D connected component
(the body) -> dilation back by that radius and two voxels more, kept inside the thresholded
voxels, so the surface the erosion took comes back (an opening alone would also shave convex rims
such as arms) while the table re-enters only within two voxels of the body -> an in-plane closing
by the same radius, then holes filled slice by slice (lungs, bowel gas, trachea). Nothing here
assumes which way is up, so supine and prone patients are handled alike; arms joined to the trunk
in 3D are kept.

Connected components use connected-components-3d (cc3d), several times faster than
scipy.ndimage.label on large volumes (benchmarks/skeleton_ct.py measures both).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU = -1000.0
_CROSS = ndimage.generate_binary_structure(2, 1)[None]  # in-plane 4-neighbourhood, one slice thick
_SQUARE = ndimage.generate_binary_structure(2, 2)[None]  # in-plane 8-neighbourhood
_RIM_STEPS = 2
WORKING_MM = 2.0  # in-plane spacing the body is searched at; finer slices are pooled to about this


class NoBodyFound(ValueError):
    """No voxel of the volume looks like a body at the given threshold."""


def in_plane_steps(spacing_zyx, radius_mm: float) -> int:
    """Unit erosion steps that make up `radius_mm` at the volume's mean in-plane spacing."""
    in_plane = float(np.mean(spacing_zyx[-2:]))
    return max(0, int(round(radius_mm / in_plane)))


def _morph_in_plane(mask: np.ndarray, steps: int, grow: bool) -> np.ndarray:
    """`steps` in-plane erosions (or dilations); cross and square alternate, so the element is an
    octagon close to a disc rather than a diamond or a square."""
    operation = ndimage.binary_dilation if grow else ndimage.binary_erosion
    for step in range(steps):
        mask = operation(mask, structure=_CROSS if step % 2 == 0 else _SQUARE)
    return mask


def largest_component(mask: np.ndarray, backend: str = "cc3d") -> np.ndarray:
    """The largest face-connected component of `mask` (3D), as a bool mask; all False when empty."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    if backend == "cc3d":
        import cc3d

        return cc3d.largest_k(mask, k=1, connectivity=6).astype(bool)
    labels, _ = ndimage.label(mask)  # scipy's default structure is face connectivity, as above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes_by_slice(mask: np.ndarray) -> np.ndarray:
    """Holes filled in every axial slice (axis 0): a 3D fill would leave lungs open through the
    airway, and a slice-wise one closes each cross-section."""
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def body_mask(hu: np.ndarray, spacing_zyx, threshold_hu: float = -500.0, opening_mm: float = 6.0,
              working_mm: float = WORKING_MM) -> np.ndarray:
    """Bool mask of the patient's body in `hu` ((z, y, x) or (y, x), HU). Raises NoBodyFound when
    no voxel is above `threshold_hu` or nothing survives the opening.

    Slices finer than `working_mm` in-plane are searched on a grid pooled to about that spacing
    (a 512 x 512 slice at 0.7 mm: 2 x 2 blocks), and the boundary is then refined at full
    resolution within one block of the coarse one: same masks, a fraction of the morphology.
    """
    volume = hu if hu.ndim == 3 else hu[None]
    above = volume > threshold_hu
    if not above.any():
        raise NoBodyFound(f"no voxel is above {threshold_hu:g} HU (maximum {float(volume.max()) if volume.size else 0:g})")
    factor = max(1, int(working_mm // float(np.mean(spacing_zyx[-2:]))))
    if factor == 1:
        body = _body_from_tissue(above, spacing_zyx, opening_mm, threshold_hu)
    else:
        coarse_spacing = (*spacing_zyx[:-2], *(s * factor for s in spacing_zyx[-2:]))
        coarse = _body_from_tissue(_pool_any(above, factor), coarse_spacing, opening_mm, threshold_hu)
        body = _refine(coarse, above, factor)
    return body if hu.ndim == 3 else body[0]


def _body_from_tissue(above: np.ndarray, spacing_zyx, opening_mm: float, threshold_hu: float) -> np.ndarray:
    steps = in_plane_steps(spacing_zyx, opening_mm)
    core = largest_component(_morph_in_plane(above, steps, grow=False))
    if not core.any():
        raise NoBodyFound(f"nothing above {threshold_hu:g} HU is thicker than the {opening_mm:g} mm opening")
    # two steps more than were eroded: an opening alone would also shave convex rims (arms)
    body = largest_component(_morph_in_plane(core, steps + _RIM_STEPS, grow=True) & above)
    # a closing seals a cross-section whose wall is thinner than a voxel (lungs against the ribs)
    # before its holes are filled; it adds only air in the body's own narrow folds
    closed = _morph_in_plane(_morph_in_plane(body, steps, grow=True), steps, grow=False)
    return fill_holes_by_slice(body | closed)


def _pool_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """In-plane blocks of factor x factor voxels: True where any voxel of the block is."""
    z, y, x = mask.shape
    padded = np.pad(mask, ((0, 0), (0, -y % factor), (0, -x % factor)))
    return padded.reshape(z, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor).any(axis=(2, 4))


def _refine(coarse: np.ndarray, above: np.ndarray, factor: int) -> np.ndarray:
    """Full-resolution body: the coarse body's interior whole (lungs stay filled), and in a band of
    one block around its boundary the voxels above the threshold."""
    up = coarse.repeat(factor, axis=1).repeat(factor, axis=2)[:, :above.shape[1], :above.shape[2]]
    inner = _morph_in_plane(up, factor, grow=False)
    outer = _morph_in_plane(up, factor, grow=True)
    return inner | (outer & above)
