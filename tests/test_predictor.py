"""Prediction: model loading, ensembling, geometry round trips, folders, errors, post-processing."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # only to build and inspect inputs outside autoseg.io (DICOM, in-memory API)
import torch
from torch import nn

from autoseg import io
from autoseg.checkpoint import model_payload, save_checkpoint
from autoseg.config import ConfigPlan, NetworkPlan, NormalizationPlan, ResamplingPlan
from autoseg.errors import CheckpointError, ConfigError, ImageIOError
from autoseg.inference.ensemble import load_models, resolve_checkpoint
from autoseg.inference.inputs import discover_cases
from autoseg.inference.predictor import Predictor, predict, probabilities_path
from autoseg.networks import build_network
from autoseg.postprocessing import keep_largest_component
from autoseg.registry import NETWORKS

LABELS3 = {"background": 0, "vertebra": 1, "disc": 2}
LABELS2 = {"background": 0, "bone": 1}


# ---------------------------------------------------------------- tiny models
class PointwiseNet(nn.Module):
    """A 1x1 convolution: each voxel's logits depend on that voxel alone, so results are exact."""

    def __init__(self, plan: NetworkPlan):
        super().__init__()
        conv = nn.Conv3d if plan.ndim == 3 else nn.Conv2d
        self.conv = conv(plan.in_channels, plan.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_pointwise(plan: NetworkPlan) -> nn.Module:
    return PointwiseNet(plan)


@pytest.fixture(autouse=True, scope="module")
def _registered_stub_network():
    """Registered only while this module's tests run, so the network contract tests never see it."""
    NETWORKS.register("test_pointwise")(build_pointwise)
    yield
    NETWORKS.unregister("test_pointwise")


def network_plan(ndim: int = 3, in_channels: int = 1, num_classes: int = 3, name: str = "unet") -> NetworkPlan:
    kernel = (3,) * ndim
    return NetworkPlan(name, ndim, in_channels, num_classes, features=(2, 4, 8), kernel_sizes=(kernel,) * 3,
                       strides=((1,) * ndim, (2,) * ndim, (2,) * ndim), blocks_per_stage=1)


def config_plan(network: NetworkPlan, spacing: tuple[float, ...], patch: tuple[int, ...],
                scheme: str = "zscore") -> ConfigPlan:
    return ConfigPlan(name="2d" if network.ndim == 2 else "3d_fullres", spacing=spacing, median_shape=patch,
                      patch_size=patch, batch_size=2, network=network,
                      normalization=tuple(NormalizationPlan(scheme) for _ in range(network.in_channels)),
                      resampling=ResamplingPlan(), mirror_axes=tuple(range(len(patch))))


def save_run(folder: Path, config: ConfigPlan, labels: dict[str, int], seed: int = 0,
             weights: torch.Tensor | None = None, image_ndim: int | None = None) -> Path:
    """A run folder with checkpoint_final.pt, as the trainer leaves it (no training needed).
    image_ndim: the training images' (3 for a 2d configuration of 3D data; default the network's)."""
    torch.manual_seed(seed)
    model = build_network(config.network)
    if weights is not None:  # PointwiseNet only: fixed logits = weights * intensity
        with torch.no_grad():
            model.conv.weight.copy_(weights.reshape(model.conv.weight.shape))
            model.conv.bias.zero_()
    channels = [f"chan{c}" for c in range(config.network.in_channels)]
    save_checkpoint(folder / "checkpoint_final.pt", model_payload(model, config, labels, channels, "Dataset001_Test",
                                                                  image_ndim=image_ndim))
    return folder


@pytest.fixture
def unet3d_run(tmp_path: Path) -> Path:
    config = config_plan(network_plan(), spacing=(2.0, 1.0, 1.0), patch=(8, 8, 8))
    return save_run(tmp_path / "run3d", config, LABELS3)


def cpu_predictor(runs, **options) -> Predictor:
    return Predictor(load_models(runs if isinstance(runs, list) else [runs], "cpu"), device="cpu", **options)


def rotation_direction() -> tuple[float, ...]:
    a, b = math.radians(30), math.radians(-20)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel().tolist())


def write_volume(path: Path, shape=(5, 11, 9), seed: int = 0, geometry: io.Geometry | None = None) -> Path:
    image = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    return io.write_image(path, image, geometry or io.Geometry.default(len(shape), (2.5, 0.9, 1.1)))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------- geometry and formats
@pytest.mark.parametrize("ending", [".mha", ".nii.gz"])
def test_output_has_the_input_geometry(unet3d_run: Path, tmp_path: Path, ending: str) -> None:
    geometry = io.Geometry((1.1, 0.9, 2.5), (-12.345, 67.891, 3.3333), rotation_direction())
    source = write_volume(tmp_path / "in" / f"ct_0000{ending}", geometry=geometry)
    out = cpu_predictor(unet3d_run).predict_file([source], tmp_path / "out" / f"ct{ending}")

    written, expected = sitk.ReadImage(str(out)), sitk.ReadImage(str(source))
    assert written.GetSize() == expected.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= set(LABELS3.values())
    placement = (written.GetSpacing(), written.GetOrigin(), written.GetDirection())
    if ending == ".mha":  # stores doubles: exactly equal
        assert placement == (expected.GetSpacing(), expected.GetOrigin(), expected.GetDirection())
    else:  # NIfTI stores float32 (direction as a quaternion): equal to float32 precision
        np.testing.assert_array_equal(placement[0], expected.GetSpacing())
        np.testing.assert_array_equal(placement[1], expected.GetOrigin())
        np.testing.assert_allclose(placement[2], expected.GetDirection(), rtol=0, atol=1e-7)


def test_png_in_gives_png_out_of_the_same_size(tmp_path: Path) -> None:
    run = save_run(tmp_path / "run2d", config_plan(network_plan(ndim=2), (1.0, 1.0), (8, 8)), LABELS3)
    pixels = np.random.default_rng(1).integers(0, 255, (13, 17)).astype(np.uint8)
    io.write_image(tmp_path / "in" / "xray_0000.png", pixels, io.Geometry.default(2))

    written = cpu_predictor(run).predict_folder(tmp_path / "in", tmp_path / "out")

    assert written == [tmp_path / "out" / "xray.png"]
    label, geometry = io.read_label(written[0])
    assert label.shape == (13, 17) and geometry.ndim == 2


def test_rgb_file_feeds_a_three_channel_model(tmp_path: Path) -> None:
    run = save_run(tmp_path / "run", config_plan(network_plan(ndim=2, in_channels=3), (1.0, 1.0), (8, 8)), LABELS3)
    rgb = np.random.default_rng(9).integers(1, 255, (3, 10, 12)).astype(np.uint8)
    source = io.write_image(tmp_path / "in" / "photo.png", rgb, io.Geometry.default(2))
    written = cpu_predictor(run).predict_folder([source], tmp_path / "out")
    assert written == [tmp_path / "out" / "photo.png"]
    assert io.read_label(written[0])[0].shape == (10, 12)


def test_image_smaller_than_the_patch(tmp_path: Path) -> None:
    run = save_run(tmp_path / "run", config_plan(network_plan(), (1.0, 1.0, 1.0), (8, 8, 8)), LABELS3)
    image = np.random.default_rng(2).normal(size=(1, 3, 4, 5)).astype(np.float32)
    label, probabilities = cpu_predictor(run).predict_array(image, io.Geometry.default(3))
    assert label.shape == (3, 4, 5) and label.dtype == np.uint8
    assert probabilities.shape == (3, 3, 4, 5) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_2d_model_predicts_a_volume_slice_by_slice(tmp_path: Path) -> None:
    run = save_run(tmp_path / "run", config_plan(network_plan(ndim=2), (1.0, 1.0), (8, 8)), LABELS3, image_ndim=3)
    image = np.random.default_rng(3).normal(size=(1, 3, 10, 9)).astype(np.float32)
    label, probabilities = cpu_predictor(run).predict_array(image, io.Geometry.default(3, (3.0, 1.0, 1.0)))
    assert label.shape == (3, 10, 9) and probabilities.shape == (3, 3, 10, 9)


def test_dicom_series_folder_is_one_case_written_as_nifti(unet3d_run: Path, tmp_path: Path) -> None:
    series = tmp_path / "scans" / "patient7"
    write_dicom_series(series, np.random.default_rng(4).integers(0, 500, (4, 9, 8)).astype(np.int16))
    written = cpu_predictor(unet3d_run).predict_folder(tmp_path / "scans", tmp_path / "out")
    assert written == [tmp_path / "out" / "patient7.nii.gz"]
    assert io.read_label(written[0])[0].shape == (4, 9, 8)


def write_dicom_series(folder: Path, volume: np.ndarray) -> None:
    folder.mkdir(parents=True)
    uid = "1.2.826.0.1.3680043.2.1125.1.777"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z, plane in enumerate(volume):
        image = sitk.GetImageFromArray(plane)
        image.SetSpacing((0.8, 0.8))
        tags = {"0008|0060": "CT", "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2", "0008|0018": f"{uid}.3.{z}",
                "0020|0013": str(z + 1), "0020|0032": f"0\\0\\{2.0 * z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0018|0050": "2.0"}
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(image)


# ---------------------------------------------------------------- ensembling and labels
def test_ensemble_of_two_runs_averages_member_probabilities(tmp_path: Path) -> None:
    config = config_plan(network_plan(name="test_pointwise"), (2.0, 1.0, 1.0), (4, 8, 8))
    run_a = save_run(tmp_path / "a", config, LABELS3, seed=1)
    run_b = save_run(tmp_path / "b", config, LABELS3, seed=2)
    image = np.random.default_rng(5).normal(3, 1, (1, 5, 9, 7)).astype(np.float32)
    geometry = io.Geometry.default(3, (2.5, 0.9, 1.1))

    prob_a = cpu_predictor(run_a).predict_array(image, geometry)[1]
    prob_b = cpu_predictor(run_b).predict_array(image, geometry)[1]
    label, prob_ab = cpu_predictor([run_a, run_b]).predict_array(image, geometry)

    assert not np.allclose(prob_a, prob_b, atol=1e-3)  # the members really differ
    np.testing.assert_allclose(prob_ab, (prob_a + prob_b) / 2, atol=1e-5)
    np.testing.assert_array_equal(label, np.argmax(prob_ab, axis=0))


def intensity_run(folder: Path, ndim: int = 3) -> Path:
    """Class 1 wins exactly where the (unnormalized) image is positive: logits (-x, +x)."""
    patch = (4, 8, 8) if ndim == 3 else (8, 8)
    config = config_plan(network_plan(ndim=ndim, num_classes=2, name="test_pointwise"), (1.0,) * ndim, patch, "none")
    return save_run(folder, config, LABELS2, weights=torch.tensor([-1.0, 1.0]))


def test_argmax_gives_the_class_the_network_favours(tmp_path: Path) -> None:
    image = np.where(np.random.default_rng(6).random((1, 5, 9, 7)) > 0.5, 2.0, -2.0).astype(np.float32)
    label, probabilities = cpu_predictor(intensity_run(tmp_path / "run")).predict_array(image, io.Geometry.default(3))
    np.testing.assert_array_equal(label, (image[0] > 0).astype(np.uint8))
    np.testing.assert_allclose(probabilities[1], torch.sigmoid(torch.tensor(2 * image[0])).numpy(), atol=1e-5)


def test_keep_largest_option_removes_small_islands(tmp_path: Path) -> None:
    image = np.full((1, 12, 12), -1.0, np.float32)
    image[0, 1:6, 1:6] = 1.0  # 25 pixels
    image[0, 9:11, 9:11] = 1.0  # 4 pixels
    run = intensity_run(tmp_path / "run", ndim=2)
    label, _ = cpu_predictor(run, keep_largest=True).predict_array(image, io.Geometry.default(2))
    assert label[1:6, 1:6].all() and label.sum() == 25


def test_members_with_different_plans_cannot_form_an_ensemble(tmp_path: Path) -> None:
    run_a = save_run(tmp_path / "a", config_plan(network_plan(), (2.0, 1.0, 1.0), (8, 8, 8)), LABELS3)
    run_b = save_run(tmp_path / "b", config_plan(network_plan(), (1.0, 1.0, 1.0), (8, 8, 8)), LABELS3)
    with pytest.raises(CheckpointError, match=r"b/checkpoint_final.pt.*spacing"):
        load_models([run_a, run_b])


def test_probabilities_are_saved_beside_the_label(unet3d_run: Path, tmp_path: Path) -> None:
    source = write_volume(tmp_path / "in" / "ct_0000.nii.gz")
    out = cpu_predictor(unet3d_run).predict_file([source], tmp_path / "out" / "ct.nii.gz", save_probabilities=True)
    saved = np.load(probabilities_path(out))
    assert probabilities_path(out).name == "ct.npz" and saved["probabilities"].dtype == np.float16
    assert list(saved["label_names"]) == ["background", "vertebra", "disc"]
    assert saved["probabilities"].shape == (3, 5, 11, 9)
    np.testing.assert_allclose(saved["probabilities"].astype(np.float32).sum(axis=0), 1.0, atol=1e-2)


# ---------------------------------------------------------------- folders and errors
def test_wrong_channel_count_fails_before_writing(unet3d_run: Path, tmp_path: Path) -> None:
    write_volume(tmp_path / "in" / "a_0000.nii.gz")
    write_volume(tmp_path / "in" / "b_0000.nii.gz")
    write_volume(tmp_path / "in" / "b_0001.nii.gz")
    with pytest.raises(ConfigError, match=r"b_0000.nii.gz.*expects 1 input channel\(s\), found 2"):
        cpu_predictor(unet3d_run).predict_folder(tmp_path / "in", tmp_path / "out")
    assert files_in(tmp_path / "out") == []


def test_unreadable_file_fails_before_writing(unet3d_run: Path, tmp_path: Path) -> None:
    write_volume(tmp_path / "in" / "a_0000.nii.gz")
    (tmp_path / "in" / "b_0000.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(ImageIOError, match="b_0000.nii.gz"):
        cpu_predictor(unet3d_run).predict_folder(tmp_path / "in", tmp_path / "out")
    assert files_in(tmp_path / "out") == []


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope: no such run folder.*train"):
        load_models([tmp_path / "nope"])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match=r"empty_run: run folder holds none of checkpoint_final.pt"):
        load_models([tmp_path / "empty_run"])
    assert files_in(tmp_path) == ["empty_run"]


def test_loaded_model_holds_the_checkpoint_weights_channels_last_on_cpu(unet3d_run: Path) -> None:
    saved = torch.load(unet3d_run / "checkpoint_final.pt", weights_only=False)["model_state"]
    model = load_models([unet3d_run], "cpu").members[0].model
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    weights = [p for p in model.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)


def test_loaded_model_keeps_its_weights_when_the_checkpoint_is_rewritten_in_place(unet3d_run: Path) -> None:
    """Checkpoints are memory-mapped at load; the model must own its weights, not pages of the file."""
    path = unet3d_run / "checkpoint_final.pt"
    model = load_models([unet3d_run], "cpu").members[0].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with path.open("r+b") as f:  # e.g. `cp other.pt checkpoint_final.pt`: same inode, new bytes
        f.write(b"\0" * path.stat().st_size)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_checkpoint_missing_weights_is_a_clear_error(unet3d_run: Path) -> None:
    path = unet3d_run / "checkpoint_final.pt"
    payload = torch.load(path, weights_only=True)
    payload["model_state"].pop(next(iter(payload["model_state"])))
    save_checkpoint(path, payload)  # a consistent file (fresh checksums) that lacks a weight
    with pytest.raises(CheckpointError, match=r"(?s)checkpoint_final.pt: cannot rebuild its network 'unet'.*Missing key"):
        load_models([unet3d_run])


def test_run_folder_prefers_final_then_best_then_latest(tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        (run / name).write_bytes(b"")
    assert resolve_checkpoint(run).name == "checkpoint_best.pt"
    (run / "checkpoint_best.pt").unlink()
    assert resolve_checkpoint(run).name == "checkpoint_latest.pt"
    assert "training has not finished" in caplog.text


def test_continue_skips_cases_whose_output_exists(unet3d_run: Path, tmp_path: Path) -> None:
    write_volume(tmp_path / "in" / "a_0000.nii.gz")
    write_volume(tmp_path / "in" / "b_0000.nii.gz", seed=1)
    sentinel = np.full((5, 11, 9), 7, np.uint8)
    io.write_image(tmp_path / "out" / "a.nii.gz", sentinel, io.Geometry.default(3))
    advances: list[int] = []

    def progress(description: str, total: int):
        assert total == 2
        return advances.append

    written = cpu_predictor(unet3d_run).predict_folder(tmp_path / "in", tmp_path / "out", skip_existing=True,
                                                       progress=progress)
    assert written == [tmp_path / "out" / "b.nii.gz"] and sum(advances) == 2
    np.testing.assert_array_equal(io.read_label(tmp_path / "out" / "a.nii.gz")[0], sentinel)


def test_refuses_to_write_into_the_input_folder(unet3d_run: Path, tmp_path: Path) -> None:
    source = write_volume(tmp_path / "in" / "a_0000.nii.gz")
    predictor = cpu_predictor(unet3d_run)
    with pytest.raises(ConfigError, match="holds input images"):
        predictor.predict_folder(tmp_path / "in", tmp_path / "in")
    with pytest.raises(ConfigError, match="holds input images"):
        predictor.predict_folder([source], tmp_path / "in")
    assert files_in(tmp_path / "in") == ["a_0000.nii.gz"]


def test_writer_errors_surface(unet3d_run: Path, tmp_path: Path, monkeypatch) -> None:
    write_volume(tmp_path / "in" / "a_0000.nii.gz")

    def failing_write(path, array, geometry, compress=True):
        raise ImageIOError(f"{path}: disk full")

    monkeypatch.setattr(io, "write_image", failing_write)
    with pytest.raises(ImageIOError, match="disk full"):
        cpu_predictor(unet3d_run).predict_folder(tmp_path / "in", tmp_path / "out")


def test_input_discovery_groups_channels_and_checks_gaps(tmp_path: Path) -> None:
    for name in ("p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0000.nii.gz", "p2_0001.nii.gz", "plain.mha"):
        write_volume(tmp_path / "in" / name, shape=(2, 3, 4))
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    cases = discover_cases(tmp_path / "in")
    assert [(c.case_id, [f.name for f in c.files], c.output_ending) for c in cases] == [
        ("p1", ["p1_0000.nii.gz", "p1_0001.nii.gz"], ".nii.gz"),
        ("p2", ["p2_0000.nii.gz", "p2_0001.nii.gz"], ".nii.gz"),
        ("plain", ["plain.mha"], ".mha"),
    ]
    (tmp_path / "in" / "p2_0001.nii.gz").rename(tmp_path / "in" / "p2_0002.nii.gz")
    with pytest.raises(ConfigError, match="case 'p2'.*without gaps"):
        discover_cases(tmp_path / "in")


# ---------------------------------------------------------------- in-memory API
def test_predict_numpy_with_spacing(unet3d_run: Path) -> None:
    image = np.random.default_rng(7).normal(size=(5, 11, 9)).astype(np.float32)
    label = predict(image, [unet3d_run], spacing=(2.5, 0.9, 1.1), device="cpu")
    assert isinstance(label, np.ndarray) and label.shape == (5, 11, 9)
    with pytest.raises(ConfigError, match="needs spacing"):
        predict(image, [unet3d_run], device="cpu")


def test_predict_simpleitk_image_keeps_its_geometry(unet3d_run: Path) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(8).normal(size=(5, 11, 9)).astype(np.float32))
    image.SetSpacing((1.1, 0.9, 2.5))
    image.SetOrigin((-3.25, 17.5, 0.125))
    image.SetDirection(rotation_direction())
    label = predict(image, [unet3d_run], device="cpu", tta=False)
    assert isinstance(label, sitk.Image) and label.GetSize() == image.GetSize()
    assert (label.GetSpacing(), label.GetOrigin(), label.GetDirection()) == (
        image.GetSpacing(), image.GetOrigin(), image.GetDirection())


# ---------------------------------------------------------------- keep_largest_component
def two_class_label() -> np.ndarray:
    label = np.zeros((8, 8), np.uint8)
    label[0:3, 0:3] = 1  # class 1: 9 pixels
    label[6:8, 6:8] = 1  # class 1: 4 pixels
    label[0:2, 6:8] = 2  # class 2: 4 pixels
    label[7, 0] = 2  # class 2: 1 pixel
    return label


def test_keep_largest_component_per_class() -> None:
    label = two_class_label()
    cleaned = keep_largest_component(label)
    assert (cleaned == 1).sum() == 9 and cleaned[0:3, 0:3].all()
    assert (cleaned == 2).sum() == 4 and cleaned[7, 0] == 0
    assert cleaned.dtype == label.dtype and (label == two_class_label()).all()  # input untouched


def test_keep_largest_component_only_listed_classes() -> None:
    cleaned = keep_largest_component(two_class_label(), classes=[2])
    assert (cleaned == 1).sum() == 13 and (cleaned == 2).sum() == 4


def test_keep_largest_component_foreground_as_one() -> None:
    label = two_class_label()
    label[2, 3:7] = 2  # joins the 3x3 class-1 block to the class-2 block: one foreground structure
    cleaned = keep_largest_component(label, foreground_as_one=True)
    assert cleaned[6:8, 6:8].sum() == 0 and cleaned[7, 0] == 0
    assert (cleaned == 1).sum() == 9 and (cleaned == 2).sum() == 8
