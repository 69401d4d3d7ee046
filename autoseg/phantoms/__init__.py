"""Synthetic phantom datasets for the five clinical tasks, written in the nnU-Net v2 raw layout.

    from autoseg.phantoms import write_example
    folder = write_example("lumbar-ct", "data", cases=4, seed=0, scale=1.0)

Names: cervical-xray, lumbar-xray, lumbar-ct, skeleton-ct, dti-cord. Each phantom takes size
options (all take `scale`; see each module's docstring) and draws every case from its own seeded
stream, so datasets are reproducible and a case does not depend on how many were asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from autoseg.phantoms import cervical_xray, dti_cord, lumbar_ct, lumbar_xray, skeleton_ct
from autoseg.phantoms.common import Phantom, PhantomCase
from autoseg.phantoms.writer import resolve_options, write_dataset
from autoseg.phantoms import writer as _writer
from autoseg.registry import Registry

PHANTOMS: Registry = Registry("phantom")
for _module in (cervical_xray, lumbar_xray, lumbar_ct, skeleton_ct, dti_cord):
    PHANTOMS.register(_module.PHANTOM.name)(_module.PHANTOM)


def write_example(
    name: str, out_dir: str | Path, cases: int | None = None, seed: int = 0, *, overwrite: bool = False, **size_options: Any
) -> Path:
    """Write phantom `name` into out_dir/DatasetNNN_Name and return that dataset folder.

    `cases` defaults to the phantom's default (4-6). An existing dataset there is an error
    unless `overwrite=True`, which replaces only the files a phantom writes.
    """
    phantom = PHANTOMS.get(name)
    count = phantom.default_cases if cases is None else cases
    return write_dataset(phantom, Path(out_dir), count, seed, size_options, overwrite)


def generate_case(name: str, index: int = 0, seed: int = 0, **size_options: Any) -> PhantomCase:
    """Case `index` of phantom `name` in memory, exactly as `write_example` would write it."""
    phantom = PHANTOMS.get(name)
    return _writer.generate_case(phantom, index, seed, resolve_options(phantom, size_options))


__all__ = ["PHANTOMS", "Phantom", "PhantomCase", "generate_case", "write_example"]
