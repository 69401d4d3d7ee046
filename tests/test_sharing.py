"""Model sharing: export to a zip, import into the workdir, and refusing unsafe or incomplete zips."""
from __future__ import annotations

import io as bytes_io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg import io
from autoseg.errors import CheckpointError, ConfigError
from autoseg.inference.bundle import load_bundle, member_checkpoints
from autoseg.inference.bundle_predictor import BundlePredictor
from autoseg.inference.ensemble import load_models
from autoseg.inference.predictor import Predictor
from autoseg.sharing import PREDICTION_KEYS, export_model, import_model, is_safe_member, models_dir


def labels_of(models: list[Path], image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictor = Predictor(load_models(models, "cpu"), device="cpu", tta=False)
    return predictor.predict_array(image, io.Geometry.default(3, (1.0, 1.0, 1.0)))


def synthetic_image() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1, (1, 6, 10, 9)).astype(np.float32)


def zip_payload(zip_path: Path, member: str) -> dict:
    with zipfile.ZipFile(zip_path) as archive:
        return torch.load(bytes_io.BytesIO(archive.read(member)), weights_only=False)


def rezip(source: Path, target: Path, drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None) -> Path:
    """A copy of a zip without some members and with others added (to build broken zips)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name not in drop:
                new.writestr(name, old.read(name))
        for name, data in (add or {}).items():
            new.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def exported_once(make_run, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, its export), made once per module; tests copy the zip before changing anything."""
    root = tmp_path_factory.mktemp("sharing")
    run = make_run(root / "runs" / "3d_fullres" / "fold_0")
    return run, export_model(run, root / "share" / "spine.zip")


@pytest.fixture
def exported(exported_once: tuple[Path, Path], tmp_path: Path) -> Path:
    target = tmp_path / "share" / "spine.zip"
    target.parent.mkdir()
    shutil.copyfile(exported_once[1], target)
    return target


# ---------------------------------------------------------------- round trip
def test_export_then_import_predicts_identically(exported_once: tuple[Path, Path], tmp_path: Path) -> None:
    run, zip_path = exported_once
    folder = import_model(zip_path, workdir=tmp_path / "work")

    assert folder == tmp_path / "work" / "models" / "spine" and (folder / "model.json").is_file()
    bundle, base = load_bundle(folder)
    imported = member_checkpoints(bundle, base)[0]
    assert [p.relative_to(folder).as_posix() for p in imported] == ["3d_fullres/fold_0.pt"]
    original_label, original_prob = labels_of([run], synthetic_image())
    imported_label, imported_prob = labels_of(imported, synthetic_image())
    assert np.array_equal(original_label, imported_label)
    assert np.array_equal(original_prob, imported_prob)
    assert str(folder) in bundle.predict_command


def test_zip_holds_prediction_state_only_and_is_smaller(exported_once: tuple[Path, Path]) -> None:
    run, exported = exported_once
    with zipfile.ZipFile(exported) as archive:
        assert sorted(archive.namelist()) == ["3d_fullres/fold_0.pt", "model.json"]
        document = json.loads(archive.read("model.json"))
    payload = zip_payload(exported, "3d_fullres/fold_0.pt")
    assert "training" not in payload and set(payload) == {"format_version", "checksums", *PREDICTION_KEYS}
    assert document["members"] == [{"config": "3d_fullres", "checkpoints": ["3d_fullres/fold_0.pt"]}]
    assert document["dataset_name"] == "Dataset001_Tiny" and document["predict_command"] == ""
    original = run / "checkpoint_final.pt"
    assert "training" in torch.load(original, weights_only=False)
    assert exported.stat().st_size < original.stat().st_size


def test_bundle_export_keeps_members_and_postprocessing(make_run, tmp_path: Path) -> None:
    for fold in (0, 1):
        make_run(tmp_path / "runs" / "2d" / f"fold_{fold}", ndim=2, seed=fold)
    best = tmp_path / "runs" / "best.json"
    best.write_text(json.dumps({
        "dataset_name": "Dataset001_Tiny", "labels": {"background": 0, "vertebra": 1, "disc": 2},
        "members": [{"config": "2d", "checkpoints": [f"2d/fold_{f}/checkpoint_final.pt" for f in (0, 1)]}],
        "postprocessing": {"keep_largest_foreground": False, "keep_largest_classes": [1]},
        "cv_mean_foreground_dice": 0.5}))

    folder = import_model(export_model(best, tmp_path / "share" / "best.zip"), workdir=tmp_path / "work", name="tiny")

    bundle, base = load_bundle(folder)
    assert bundle.members[0].checkpoints == ("2d/fold_0.pt", "2d/fold_1.pt")
    assert bundle.postprocessing.keep_largest_classes == (1,) and bundle.cv_mean_foreground_dice == 0.5
    image, geometry = synthetic_image()[:, 0], io.Geometry.default(2)
    original = BundlePredictor(best, device="cpu", tta=False).predict_array(image, geometry)
    imported = BundlePredictor(folder, device="cpu", tta=False).predict_array(image, geometry)
    assert np.array_equal(original[0], imported[0]) and np.array_equal(original[1], imported[1])


def test_an_imported_model_can_be_shared_again(exported: Path, tmp_path: Path) -> None:
    folder = import_model(exported, workdir=tmp_path / "work")
    again = export_model(folder, tmp_path / "again.zip")
    copy = import_model(again, workdir=tmp_path / "work")
    assert copy == tmp_path / "work" / "models" / "again"
    first, second = (member_checkpoints(*load_bundle(f))[0] for f in (folder, copy))
    before, after = (torch.load(f[0], weights_only=False) for f in (first, second))
    assert before.keys() == after.keys() and before["config_plan"] == after["config_plan"]
    assert all(torch.equal(before["model_state"][k], after["model_state"][k]) for k in before["model_state"])


def test_export_into_a_folder_names_the_zip(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (tmp_path / "share").mkdir()
    assert export_model(run, tmp_path / "share").name == "Dataset001_Tiny.zip"
    assert export_model(run, tmp_path / "share", name="lumbar").name == "lumbar.zip"


# ---------------------------------------------------------------- refusing to overwrite
def test_export_refuses_to_overwrite_unless_asked(make_run, exported: Path, tmp_path: Path) -> None:
    before = exported.read_bytes()
    with pytest.raises(ConfigError, match=r"spine.zip: already exists.*overwrite"):
        export_model(make_run(tmp_path / "other", seed=5), exported)
    assert exported.read_bytes() == before
    export_model(tmp_path / "other", exported, overwrite=True)
    assert exported.read_bytes() != before


def test_import_refuses_to_overwrite_unless_asked(exported: Path, tmp_path: Path) -> None:
    folder = import_model(exported, workdir=tmp_path / "work")
    (folder / "note.txt").write_text("left from before")
    with pytest.raises(ConfigError, match=r"'spine' is already imported.*overwrite"):
        import_model(exported, workdir=tmp_path / "work")
    assert (folder / "note.txt").is_file()

    assert import_model(exported, workdir=tmp_path / "work", overwrite=True) == folder
    assert not (folder / "note.txt").exists() and (folder / "model.json").is_file()
    assert sorted(p.name for p in models_dir(tmp_path / "work").iterdir()) == ["spine"]  # no staging leftovers


# ---------------------------------------------------------------- unsafe or broken zips
@pytest.mark.parametrize("evil", ["../evil", "3d_fullres/../../evil", "/etc/evil", "C:/evil", "..\\evil"])
def test_zip_with_a_path_escaping_member_is_rejected(exported: Path, tmp_path: Path, evil: str) -> None:
    bad = rezip(exported, tmp_path / "bad.zip", add={evil: b"owned"})
    with pytest.raises(CheckpointError, match=r"bad.zip: refusing .*evil"):
        import_model(bad, workdir=tmp_path / "work")
    assert not models_dir(tmp_path / "work").exists() or not any(models_dir(tmp_path / "work").iterdir())
    assert not (tmp_path / "evil").exists() and not (tmp_path / "work" / "evil").exists()


def test_zip_missing_a_checkpoint_is_rejected_naming_it(exported: Path, tmp_path: Path) -> None:
    bad = rezip(exported, tmp_path / "bad.zip", drop=("3d_fullres/fold_0.pt",))
    with pytest.raises(CheckpointError, match=r"bad.zip: .*missing from the zip: 3d_fullres/fold_0.pt"):
        import_model(bad, workdir=tmp_path / "work")
    assert not (tmp_path / "work" / "models" / "bad").exists()


def test_model_json_is_read_strictly(exported: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(exported) as archive:
        document = json.loads(archive.read("model.json"))
    document["stray_key"] = 1
    bad = rezip(exported, tmp_path / "bad.zip", drop=("model.json",), add={"model.json": json.dumps(document).encode()})
    with pytest.raises(CheckpointError, match=r"bad.zip:model.json: unknown key\(s\) \['stray_key'\]"):
        import_model(bad, workdir=tmp_path / "work")


def test_model_json_pointing_outside_the_zip_is_rejected(exported: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(exported) as archive:
        document = json.loads(archive.read("model.json"))
    document["members"][0]["checkpoints"] = ["../../outside.pt"]
    bad = rezip(exported, tmp_path / "bad.zip", drop=("model.json",), add={"model.json": json.dumps(document).encode()})
    expected = r"bad.zip: model.json references checkpoint\(s\) outside the zip: \.\./\.\./outside.pt"
    with pytest.raises(CheckpointError, match=expected):
        import_model(bad, workdir=tmp_path / "work")


def test_damaged_checkpoint_is_named_inside_the_zip(exported: Path, tmp_path: Path) -> None:
    bad = rezip(exported, tmp_path / "bad.zip", drop=("3d_fullres/fold_0.pt",),
                add={"3d_fullres/fold_0.pt": b"not a checkpoint"})
    with pytest.raises(CheckpointError, match=r"bad.zip:3d_fullres/fold_0.pt: cannot be loaded"):
        import_model(bad, workdir=tmp_path / "work")
    assert not any(models_dir(tmp_path / "work").iterdir())  # the staging folder is gone


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.zip"
    fake.write_text("hello")
    with pytest.raises(CheckpointError, match=r"model.zip: not a readable zip"):
        import_model(fake, workdir=tmp_path / "work")
    with pytest.raises(ConfigError, match=r"model name '\.\./x' is not usable"):
        import_model(fake, workdir=tmp_path / "work", name="../x")


@pytest.mark.parametrize("name, safe", [("model.json", True), ("2d/fold_0.pt", True), ("a/../b", False),
                                        ("/abs", False), ("D:\\x", False), ("..", False), ("", False)])
def test_is_safe_member(name: str, safe: bool) -> None:
    assert is_safe_member(name) is safe


# ---------------------------------------------------------------- export errors
def test_export_errors_name_the_path(exported_once: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere: no such run folder"):
        export_model(tmp_path / "nowhere", tmp_path / "out.zip")
    with pytest.raises(ConfigError, match=r"model.tar: .*ending in .zip"):
        export_model(exported_once[0], tmp_path / "model.tar")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match=r"empty_run: run folder holds none"):
        export_model(tmp_path / "empty_run", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()
