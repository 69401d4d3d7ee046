"""ONNX export: onnxruntime reproduces PyTorch's logits for 2D and 3D networks, with a dynamic batch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from autoseg import onnx_export  # noqa: E402  (after the skips: needs the onnx extra)
from autoseg.errors import CheckpointError, ConfigError  # noqa: E402
from autoseg.inference.ensemble import load_member  # noqa: E402


@pytest.mark.parametrize("ndim, patch", [(2, (16, 12)), (3, (8, 8, 12))])
def test_onnx_matches_pytorch(make_run, tmp_path: Path, ndim: int, patch: tuple[int, ...]) -> None:
    run = make_run(tmp_path / "run", ndim=ndim, patch=patch)
    result = onnx_export.export_onnx(run, tmp_path / "model.onnx")

    assert result["path"] == str(tmp_path / "model.onnx") and result["opset"] == 17
    assert result["input_shape"] == [1, 1, *patch]
    assert 0 <= result["max_abs_diff"] <= onnx_export.DEFAULT_TOLERANCE

    # independently of export_onnx's own check: a batch of 3 through both runtimes
    image = np.random.default_rng(1).normal(size=(3, 1, *patch)).astype(np.float32)
    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    found = session.run(None, {"image": image})[0]
    member, _ = load_member(run, torch.device("cpu"))
    with torch.no_grad():
        expected = member.model(torch.from_numpy(image)).numpy()
    assert found.shape == (3, 3, *patch)
    np.testing.assert_allclose(found, expected, rtol=0, atol=onnx_export.DEFAULT_TOLERANCE)


def test_metadata_carries_plan_and_labels(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ndim=2, patch=(8, 8))
    path = onnx_export.export_onnx(run, tmp_path / "model.onnx", check=False)["path"]
    metadata = {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props}
    assert metadata["autoseg.labels"] == {"background": 0, "vertebra": 1, "disc": 2}
    assert metadata["autoseg.config_plan"]["patch_size"] == [8, 8]
    assert metadata["autoseg.channel_names"] == ["CT"] and metadata["autoseg.dataset_name"] == "Dataset001_Tiny"


def test_a_mismatch_beyond_the_tolerance_fails_and_writes_nothing(make_run, tmp_path: Path, monkeypatch) -> None:
    run = make_run(tmp_path / "run", ndim=2, patch=(8, 8))
    real = onnx_export._onnx_logits
    monkeypatch.setattr(onnx_export, "_onnx_logits", lambda path, image: real(path, image) + 0.01)
    with pytest.raises(CheckpointError, match=r"differ from PyTorch's by up to 0.01.*tolerance 0.001"):
        onnx_export.export_onnx(run, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no file, no temp left over


def test_option_mistakes_are_refused_before_exporting(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ndim=2, patch=(8, 8))
    (tmp_path / "taken.onnx").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match=r"taken.onnx: already exists"):
        onnx_export.export_onnx(run, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep me"
    with pytest.raises(ConfigError, match=r"model.pt: expected a path ending in .onnx"):
        onnx_export.export_onnx(run, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="tolerance must be a positive number"):
        onnx_export.export_onnx(run, tmp_path / "model.onnx", tolerance=0)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"bundle: is a model bundle.*one network"):
        onnx_export.export_onnx(tmp_path / "bundle", tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match=r"nowhere: no such run folder"):
        onnx_export.export_onnx(tmp_path / "nowhere", tmp_path / "model.onnx")


def test_missing_runtime_is_a_clear_error(make_run, tmp_path: Path, monkeypatch) -> None:
    real = onnx_export.importlib.util.find_spec
    monkeypatch.setattr(onnx_export.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    run = make_run(tmp_path / "run", ndim=2, patch=(8, 8))
    with pytest.raises(ConfigError, match=r"needs the package\(s\) onnxruntime.*pip install autoseg\[onnx\]"):
        onnx_export.export_onnx(run, tmp_path / "model.onnx")
    assert onnx_export.export_onnx(run, tmp_path / "model.onnx", check=False)["max_abs_diff"] is None
