"""Predicting with a model bundle: members averaged on the original grid, then the bundle's post-processing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoseg import io
from autoseg.checkpoint import model_payload, save_checkpoint
from autoseg.config import ConfigPlan, NetworkPlan, NormalizationPlan, ResamplingPlan
from autoseg.errors import CheckpointError
from autoseg.inference.bundle import BundleMember, ModelBundle, Postprocessing, save_bundle
from autoseg.inference.bundle_predictor import BundlePredictor
from autoseg.inference.ensemble import load_models
from autoseg.inference.predictor import Predictor, predict, probabilities_path
from autoseg.networks import build_network
from autoseg.registry import NETWORKS

LABELS3 = {"background": 0, "vertebra": 1, "disc": 2}
LABELS2 = {"background": 0, "bone": 1}


class VoxelwiseNet(nn.Module):
    """A 1x1 convolution: each voxel's logits depend on that voxel alone, so averages are exact."""

    def __init__(self, plan: NetworkPlan):
        super().__init__()
        self.conv = (nn.Conv3d if plan.ndim == 3 else nn.Conv2d)(plan.in_channels, plan.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_voxelwise(plan: NetworkPlan) -> nn.Module:
    return VoxelwiseNet(plan)


@pytest.fixture(autouse=True, scope="module")
def _registered_stub_network():
    """Registered only while this module's tests run, so the network contract tests never see it."""
    NETWORKS.register("test_bundle_voxelwise")(build_voxelwise)
    yield
    NETWORKS.unregister("test_bundle_voxelwise")


def config_plan(ndim: int, num_classes: int, spacing: tuple[float, ...], patch: tuple[int, ...],
                scheme: str = "zscore") -> ConfigPlan:
    kernel = (3,) * ndim
    network = NetworkPlan("test_bundle_voxelwise", ndim, 1, num_classes, features=(2, 4), kernel_sizes=(kernel,) * 2,
                          strides=((1,) * ndim, (2,) * ndim), blocks_per_stage=1)
    return ConfigPlan(name="2d" if ndim == 2 else "3d_fullres", spacing=spacing, median_shape=patch, patch_size=patch,
                      batch_size=2, network=network, normalization=(NormalizationPlan(scheme),),
                      resampling=ResamplingPlan(), mirror_axes=tuple(range(len(patch))))


def save_checkpoint_file(path: Path, config: ConfigPlan, labels: dict[str, int], seed: int = 0,
                         weights: torch.Tensor | None = None, image_ndim: int | None = None) -> Path:
    torch.manual_seed(seed)
    model = build_network(config.network)
    if weights is not None:  # fixed logits = weights * intensity
        with torch.no_grad():
            model.conv.weight.copy_(weights.reshape(model.conv.weight.shape))
            model.conv.bias.zero_()
    return save_checkpoint(path, model_payload(model, config, labels, ["chan0"], "Dataset001_Test", image_ndim=image_ndim))


def write_bundle(folder: Path, members: dict[str, list[Path]], labels: dict[str, int],
                 postprocessing: Postprocessing = Postprocessing()) -> Path:
    """A bundle file in `folder` whose checkpoint paths are relative to it, as find-best writes them."""
    relative = tuple(BundleMember(config, tuple(os.path.relpath(c, folder) for c in paths))
                     for config, paths in members.items())
    return save_bundle(ModelBundle("Dataset001_Test", labels, relative, postprocessing), folder / "best.json")


@pytest.fixture
def two_member_bundle(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """A 3D configuration with two folds and a 2D configuration (slice by slice) with one."""
    config3d = config_plan(3, 3, (2.0, 1.0, 1.0), (4, 8, 8))
    config2d = config_plan(2, 3, (1.0, 1.0), (8, 8))
    folds3d = [save_checkpoint_file(tmp_path / "runs" / "3d" / f"fold_{k}" / "checkpoint_final.pt", config3d, LABELS3, seed=k)
               for k in range(2)]
    folds2d = [save_checkpoint_file(tmp_path / "runs" / "2d" / "fold_0" / "checkpoint_final.pt", config2d, LABELS3, seed=7,
                                    image_ndim=3)]  # a 2d configuration of 3D data
    bundle = write_bundle(tmp_path / "runs", {"3d": folds3d, "2d": folds2d}, LABELS3)
    return bundle, folds3d, folds2d


def cpu_predictor(checkpoints: list[Path]) -> Predictor:
    return Predictor(load_models(checkpoints, "cpu"), device="cpu")


def test_two_members_give_the_mean_of_their_probabilities(two_member_bundle) -> None:
    bundle, folds3d, folds2d = two_member_bundle
    image = np.random.default_rng(0).normal(3, 1, (1, 5, 9, 7)).astype(np.float32)
    geometry = io.Geometry.default(3, (2.5, 0.9, 1.1))

    prob3d = cpu_predictor(folds3d).predict_array(image, geometry)[1]
    prob2d = cpu_predictor(folds2d).predict_array(image, geometry)[1]
    label, probabilities = BundlePredictor(bundle, device="cpu").predict_array(image, geometry)

    assert not np.allclose(prob3d, prob2d, atol=1e-3)  # the members really differ
    np.testing.assert_allclose(probabilities, (prob3d + prob2d) / 2, atol=1e-5)
    np.testing.assert_array_equal(label, np.argmax(probabilities, axis=0))
    assert probabilities.shape == (3, 5, 9, 7) and label.dtype == np.uint8


def test_folder_prediction_writes_labels_and_probabilities_with_the_input_geometry(two_member_bundle, tmp_path: Path) -> None:
    bundle, _, _ = two_member_bundle
    geometry = io.Geometry((1.1, 0.9, 2.5), (-4.5, 12.25, 3.0), tuple(np.eye(3).ravel().tolist()))
    for case, seed in (("a", 1), ("b", 2)):
        image = np.random.default_rng(seed).normal(100, 20, (5, 9, 7)).astype(np.float32)
        io.write_image(tmp_path / "in" / f"{case}_0000.mha", image, geometry)

    predictor = BundlePredictor(bundle, device="cpu", tta=False)
    written = predictor.predict_folder(tmp_path / "in", tmp_path / "out", save_probabilities=True)

    assert written == [tmp_path / "out" / "a.mha", tmp_path / "out" / "b.mha"]
    label, written_geometry = io.read_label(written[1])
    assert written_geometry == geometry and label.shape == (5, 9, 7)
    saved = np.load(probabilities_path(written[1]))
    assert list(saved["label_names"]) == ["background", "vertebra", "disc"]
    image, _ = io.read_image(tmp_path / "in" / "b_0000.mha")
    expected_label, expected = predictor.predict_array(image, geometry)
    np.testing.assert_allclose(saved["probabilities"].astype(np.float32), expected, atol=2e-3)
    np.testing.assert_array_equal(label, expected_label)


def two_blob_image() -> np.ndarray:
    image = np.full((1, 12, 12), -1.0, np.float32)
    image[0, 1:6, 1:6] = 1.0  # 25 pixels
    image[0, 9:11, 9:11] = 1.0  # 4 pixels: a spurious island
    return image


def intensity_bundle(folder: Path, postprocessing: Postprocessing) -> Path:
    """Two identical 2D members where class 1 wins exactly where the image is positive."""
    config = config_plan(2, 2, (1.0, 1.0), (8, 8), scheme="none")
    checkpoints = {name: [save_checkpoint_file(folder / name / "checkpoint_final.pt", config, LABELS2,
                                               weights=torch.tensor([-1.0, 1.0]))] for name in ("a", "b")}
    return write_bundle(folder, checkpoints, LABELS2, postprocessing)


@pytest.mark.parametrize("postprocessing", [Postprocessing(keep_largest_foreground=True),
                                            Postprocessing(keep_largest_classes=(1,))])
def test_bundle_postprocessing_removes_islands(tmp_path: Path, postprocessing: Postprocessing) -> None:
    bundle = intensity_bundle(tmp_path / "bundle", postprocessing)
    label = predict(two_blob_image()[0], BundlePredictor(bundle, device="cpu"))
    assert label[1:6, 1:6].all() and label.sum() == 25


def test_without_postprocessing_islands_stay(tmp_path: Path) -> None:
    bundle = intensity_bundle(tmp_path / "bundle", Postprocessing())
    label, _ = BundlePredictor(bundle, device="cpu").predict_array(two_blob_image(), io.Geometry.default(2))
    assert label.sum() == 29


def test_members_with_different_labels_are_refused(tmp_path: Path) -> None:
    a = save_checkpoint_file(tmp_path / "a" / "checkpoint_final.pt", config_plan(2, 3, (1.0, 1.0), (8, 8)), LABELS3)
    b = save_checkpoint_file(tmp_path / "b" / "checkpoint_final.pt", config_plan(2, 2, (1.0, 1.0), (8, 8)), LABELS2)
    bundle = write_bundle(tmp_path, {"first": [a], "second": [b]}, LABELS3)
    with pytest.raises(CheckpointError, match=r"member 'second'.*same dataset"):
        BundlePredictor(bundle, device="cpu")


def test_missing_checkpoint_is_named(two_member_bundle) -> None:
    bundle, _, folds2d = two_member_bundle
    folds2d[0].unlink()
    with pytest.raises(CheckpointError, match=r"missing: .*2d/fold_0/checkpoint_final.pt"):
        BundlePredictor(bundle, device="cpu")
