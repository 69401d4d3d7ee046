"""Shared test fixtures: generic helpers only (tiny synthetic data), one fixture per concern."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoseg.io import PLAIN_2D_ENDINGS, Geometry, write_image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _label_map(shape: tuple[int, ...], num_labels: int, case_index: int) -> np.ndarray:
    """Background with one disjoint box per foreground value (side by side along the last axis),
    shifted per case so cases differ; needs shape[-1] >= num_labels - 1."""
    label = np.zeros(shape, np.uint8)
    width = shape[-1] // max(1, num_labels - 1)
    for value in range(1, num_labels):
        across = [slice(case_index % 2, s - 1) if s > 2 else slice(0, s) for s in shape[:-1]]
        along = slice((value - 1) * width, (value - 1) * width + max(1, width - 1))
        label[(*across, along)] = value
    return label


def _image_for(label: np.ndarray, channel: int, rng: np.random.Generator, ending: str) -> np.ndarray:
    """Noise plus a per-label offset, so foreground intensities differ from background."""
    image = rng.normal(50.0 + 10 * channel, 5.0, label.shape) + 40.0 * label
    if ending in PLAIN_2D_ENDINGS:
        return np.clip(image, 0, 255).astype(np.uint8)
    return image.astype(np.float32)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a tiny nnU-Net v2 raw dataset; returns its folder.

    Cases are named case_000, case_001, ...; labels are boxes of every declared value. For 2D
    endings (PNG, ...) pass a 2D `shape`. `extra_json` is merged into dataset.json.
    """

    def make(name: str = "Dataset001_Tiny", *, num_cases: int = 3, num_channels: int = 1,
             shape: tuple[int, ...] = (4, 6, 5), file_ending: str = ".nii.gz", num_labels: int = 3,
             spacing_zyx: tuple[float, ...] | None = None, num_test: int = 0, seed: int = 0,
             extra_json: dict | None = None) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        spacing = spacing_zyx or ((3.0, 0.8, 0.8) if len(shape) == 3 else (1.0,) * len(shape))
        geometry = Geometry.default(len(shape), spacing)
        for index in range(num_cases + num_test):
            training = index < num_cases
            case_id = f"case_{index:03d}"
            label = _label_map(shape, num_labels, index)
            folder = root / ("imagesTr" if training else "imagesTs")
            for channel in range(num_channels):
                image = _image_for(label, channel, rng, file_ending)
                write_image(folder / f"{case_id}_{channel:04d}{file_ending}", image, geometry)
            if training:
                write_image(root / "labelsTr" / f"{case_id}{file_ending}", label, geometry)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        meta = {
            "channel_names": {str(c): f"chan{c}" for c in range(num_channels)},
            "labels": {"background": 0, **{f"label{v}": v for v in range(1, num_labels)}},
            "numTraining": num_cases,
            "file_ending": file_ending,
            **(extra_json or {}),
        }
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
        return root

    return make


@pytest.fixture
def shared_data() -> Path:
    """The shared real datasets folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def make_run() -> Callable[..., Path]:
    """Factory writing a run folder with checkpoint_final.pt for a tiny untrained U-Net, as the
    trainer leaves it: prediction payload plus a "training" entry (SGD momentum buffers, epoch).

    make_run(folder, ndim=3, patch=(8,) * ndim, seed=0, labels=..., dataset_name=...) -> folder.
    Session-scoped (it holds no state), so module-scoped fixtures can use it too.
    """
    import torch

    from autoseg.checkpoint import model_payload, save_checkpoint
    from autoseg.config import ConfigPlan, NetworkPlan, NormalizationPlan, ResamplingPlan
    from autoseg.networks import build_network

    def make(folder: Path, *, ndim: int = 3, patch: tuple[int, ...] | None = None, seed: int = 0,
             labels: dict[str, int] | None = None, dataset_name: str = "Dataset001_Tiny") -> Path:
        labels = labels or {"background": 0, "vertebra": 1, "disc": 2}
        patch = patch or (8,) * ndim
        network = NetworkPlan("unet", ndim, 1, len(labels), features=(2, 4, 8), kernel_sizes=((3,) * ndim,) * 3,
                              strides=((1,) * ndim, (2,) * ndim, (2,) * ndim), blocks_per_stage=1)
        config = ConfigPlan(name="2d" if ndim == 2 else "3d_fullres", spacing=(1.0,) * ndim, median_shape=patch,
                            patch_size=patch, batch_size=2, network=network, normalization=(NormalizationPlan("zscore"),),
                            resampling=ResamplingPlan(), mirror_axes=tuple(range(ndim)))
        torch.manual_seed(seed)
        model = build_network(config.network)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)
        model(torch.randn(2, 1, *patch))[0].mean().backward()  # deep supervision: a list of logits
        optimizer.step()  # fills the momentum buffers, as a real run's optimizer state has them
        training = {"optimizer": optimizer.state_dict(), "epoch": 3}
        payload = model_payload(model, config, labels, ["CT"], dataset_name)
        save_checkpoint(folder / "checkpoint_final.pt", {**payload, "training": training})
        return folder

    return make
