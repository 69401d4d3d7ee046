"""find-best and prediction ensembles on synthetic cross-validation folders with hand-made probabilities.

Each configuration's out-of-fold probabilities are built from a predicted label map: 0.8 for the
predicted class where it is right; where it is wrong, 0.55 for the predicted class and 0.35 for
the true one. Two configurations that err in different places therefore average to the truth.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from autoseg import io
from autoseg.ensembling import average_probabilities, ensemble_folders, save_probabilities
from autoseg.errors import ConfigError
from autoseg.inference.bundle import Postprocessing, load_bundle, member_checkpoints
from autoseg.model_selection import best_bundle_path, find_best

DATASET = "Dataset042_Spine"
LABELS = {"background": 0, "vertebra": 1, "disc": 2}
SHAPE = (16, 16)
CASES = [f"case_{i}" for i in range(4)]
FOLDS = [["case_0", "case_1"], ["case_2", "case_3"]]


def reference(case_index: int) -> np.ndarray:
    """A vertebra (class 1) on top of a disc (class 2): one connected foreground, shifted per case."""
    label = np.zeros(SHAPE, np.uint8)
    shift = case_index % 2
    label[3:8, 3 + shift:11 + shift] = 1
    label[8:12, 3 + shift:11 + shift] = 2
    return label


def probabilities_for(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Confident where `pred` is right; where wrong, the true class is a close second."""
    probabilities = np.full((len(LABELS),) + pred.shape, 0.1, np.float32)
    wrong = pred != ref
    np.put_along_axis(probabilities, pred[None].astype(np.int64), np.where(wrong, 0.55, 0.8)[None], axis=0)
    rows, cols = np.nonzero(wrong)
    probabilities[ref[rows, cols], rows, cols] = 0.35
    return probabilities


class Layout:
    """A dataset folder and a workdir holding the cross-validation folders of find-best's contract."""

    def __init__(self, root: Path):
        self.dataset_dir, self.workdir = root / DATASET, root / "work"
        self.runs = self.workdir / "runs" / DATASET
        geometry = io.Geometry.default(2)
        for index, case_id in enumerate(CASES):
            io.write_image(self.dataset_dir / "imagesTr" / f"{case_id}_0000.nii.gz", np.zeros(SHAPE, np.float32), geometry)
            io.write_image(self.dataset_dir / "labelsTr" / f"{case_id}.nii.gz", reference(index), geometry)
        meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": len(CASES), "file_ending": ".nii.gz"}
        (self.dataset_dir / "dataset.json").write_text(json.dumps(meta))

    def add_config(self, name: str, predict: Callable[[int], np.ndarray], record_dataset_dir: bool = False) -> Path:
        """Two finished folds and the out-of-fold predictions `predict(case_index)` of every case."""
        folder = self.runs / name
        for fold, val_cases in enumerate(FOLDS):
            run_dir = folder / f"fold_{fold}"
            run_dir.mkdir(parents=True)
            (run_dir / "run.json").write_text(json.dumps({"status": "finished", "val_cases": val_cases}))
            (run_dir / "checkpoint_final.pt").write_bytes(b"weights")
        predictions = folder / "crossval" / "predictions"
        for index, case_id in enumerate(CASES):
            pred = predict(index)
            io.write_image(predictions / f"{case_id}.nii.gz", pred, io.Geometry.default(2))
            save_probabilities(predictions / f"{case_id}.npz", probabilities_for(pred, reference(index)),
                               list(LABELS.values()), list(LABELS))
        crossval = {"config": name, "folds": ["0", "1"], "num_folds": 2, "cases": CASES, "complete": True,
                    "mean_foreground_dice": 0.0, "mean_per_class": {}}
        if record_dataset_dir:
            crossval["dataset_dir"] = str(self.dataset_dir)
        (folder / "crossval" / "crossval.json").write_text(json.dumps(crossval))
        return folder

    def find_best(self, **options):
        options.setdefault("dataset_dir", self.dataset_dir)
        return find_best(DATASET, self.workdir, **options)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


# ---------------------------------------------------------------- predictions with known errors
def errs_left(index: int) -> np.ndarray:
    pred = reference(index)
    pred[3:8, :7][pred[3:8, :7] == 1] = 2  # left half of the vertebra called disc
    return pred


def errs_right(index: int) -> np.ndarray:
    pred = reference(index)
    pred[8:12, 8:][pred[8:12, 8:] == 2] = 1  # right half of the disc called vertebra
    return pred


def with_island(index: int) -> np.ndarray:
    pred = reference(index)
    pred[14:16, 0:2] = 1  # a spurious vertebra island far from the spine
    return pred


def with_disc_beside_vertebra(index: int) -> np.ndarray:
    pred = reference(index)
    shift = index % 2
    pred[3:5, 11 + shift:13 + shift] = 2  # touches the vertebra, not the disc: only per-class cleaning removes it
    return pred


def two_vertebrae(index: int) -> np.ndarray:
    label = reference(index)
    label[14:16, 0:3] = 1
    return label


# ---------------------------------------------------------------- choosing a candidate
def test_ensemble_of_two_configurations_wins_when_better(layout: Layout) -> None:
    layout.add_config("2d", errs_left)
    layout.add_config("3d_fullres", errs_right)
    bundle = layout.find_best()

    assert [m.config for m in bundle.members] == ["2d", "3d_fullres"]
    assert [row["name"] for row in bundle.ranking] == ["2d+3d_fullres", "3d_fullres", "2d"]
    assert bundle.ranking[0]["mean_foreground_dice"] == pytest.approx(1.0)
    singles = {row["name"]: row for row in bundle.ranking[1:]}
    assert singles["2d"]["per_class_dice"]["disc"] < 1.0 and singles["3d_fullres"]["per_class_dice"]["vertebra"] < 1.0
    assert bundle.cv_mean_foreground_dice == pytest.approx(1.0)
    assert f"--model best -d {DATASET}" in bundle.predict_command


def test_single_configuration_wins_a_tie_with_a_pair(layout: Layout) -> None:
    layout.add_config("2d", errs_left)
    layout.add_config("3d_fullres", reference)  # perfect: the pair cannot do better
    bundle = layout.find_best()
    assert [m.config for m in bundle.members] == ["3d_fullres"]
    assert bundle.ranking[0]["name"] == "3d_fullres" and bundle.ranking[1]["name"] == "2d+3d_fullres"


def test_scores_are_recomputed_against_the_references(layout: Layout) -> None:
    layout.add_config("2d", errs_left)  # its crossval.json claims Dice 0.0
    bundle = layout.find_best()
    # vertebra 40 voxels, of which 20 (even cases) or 15 (odd cases, shifted right) are called disc (32 voxels)
    vertebra = np.mean([2 * 20 / (20 + 40), 2 * 25 / (25 + 40)])
    disc = np.mean([2 * 32 / (52 + 32), 2 * 32 / (47 + 32)])
    assert bundle.ranking[0]["per_class_dice"]["vertebra"] == pytest.approx(vertebra)
    assert bundle.ranking[0]["per_class_dice"]["disc"] == pytest.approx(disc)


# ---------------------------------------------------------------- post-processing
@pytest.mark.parametrize("predict, expected", [
    (with_island, Postprocessing(keep_largest_foreground=True)),
    (with_disc_beside_vertebra, Postprocessing(keep_largest_classes=(2,))),
    (reference, Postprocessing()),
])
def test_postprocessing_is_kept_only_when_it_helps(layout: Layout, predict, expected: Postprocessing) -> None:
    layout.add_config("2d", predict)
    bundle = layout.find_best()
    assert bundle.postprocessing == expected
    assert bundle.cv_mean_foreground_dice == pytest.approx(1.0)


def test_postprocessing_that_removes_true_structure_is_refused(layout: Layout) -> None:
    for index, case_id in enumerate(CASES):  # the references themselves hold two vertebrae
        io.write_image(layout.dataset_dir / "labelsTr" / f"{case_id}.nii.gz", two_vertebrae(index), io.Geometry.default(2))
    layout.add_config("2d", two_vertebrae)
    bundle = layout.find_best()
    assert bundle.postprocessing == Postprocessing()
    assert bundle.cv_mean_foreground_dice == pytest.approx(1.0)


def test_the_decision_is_reproducible(layout: Layout) -> None:
    layout.add_config("2d", with_island)
    layout.add_config("3d_fullres", errs_right)
    first = layout.find_best()
    first_text = best_bundle_path(layout.workdir, DATASET).read_text()
    second = layout.find_best()
    assert first == second and best_bundle_path(layout.workdir, DATASET).read_text() == first_text


# ---------------------------------------------------------------- best.json
def test_best_json_is_a_valid_bundle_pointing_at_existing_checkpoints(layout: Layout) -> None:
    layout.add_config("2d", errs_left)
    layout.add_config("3d_fullres", errs_right)
    bundle = layout.find_best()

    loaded, base = load_bundle(best_bundle_path(layout.workdir, DATASET))
    assert loaded == bundle and base == layout.runs
    assert loaded.members[0].checkpoints == ("2d/fold_0/checkpoint_final.pt", "2d/fold_1/checkpoint_final.pt")
    assert loaded.labels == LABELS
    resolved = member_checkpoints(loaded, base)
    assert all(p.is_file() for paths in resolved for p in paths) and len(resolved) == 2


def test_dataset_dir_is_read_from_crossval_json(layout: Layout) -> None:
    layout.add_config("2d", reference, record_dataset_dir=True)
    assert find_best(DATASET, layout.workdir).cv_mean_foreground_dice == pytest.approx(1.0)


def test_without_any_dataset_dir_the_error_says_how_to_pass_one(layout: Layout) -> None:
    layout.add_config("2d", reference)
    with pytest.raises(ConfigError, match=r"no 'dataset_dir' recorded.*--dataset-dir"):
        find_best(DATASET, layout.workdir)


# ---------------------------------------------------------------- incomplete cross-validation
def test_missing_fold_is_a_clear_error(layout: Layout) -> None:
    folder = layout.add_config("2d", reference)
    for path in (folder / "fold_1").iterdir():
        path.unlink()
    (folder / "fold_1").rmdir()
    with pytest.raises(ConfigError, match=r"(?s)configuration '2d'.*incomplete.*fold 1: run folder .*fold_1 is missing"
                                          r".*autoseg train DATASET_DIR 2d"):
        layout.find_best()


def test_half_trained_fold_is_a_clear_error(layout: Layout) -> None:
    folder = layout.add_config("2d", reference)
    (folder / "fold_0" / "run.json").write_text(json.dumps({"status": "running", "val_cases": FOLDS[0]}))
    (folder / "fold_0" / "checkpoint_final.pt").unlink()
    (folder / "crossval" / "predictions" / "case_1.npz").unlink()
    with pytest.raises(ConfigError) as error:
        layout.find_best()
    message = str(error.value)
    assert "fold 0: " in message and "status 'running', expected 'finished'" in message
    assert "fold_0/checkpoint_final.pt is missing" in message
    assert "missing in" in message and "case_1" in message and "fold 1" not in message


def test_incomplete_configuration_is_skipped_unless_asked_for(layout: Layout, caplog) -> None:
    layout.add_config("2d", errs_left)
    folder = layout.add_config("3d_fullres", reference)
    (folder / "fold_1" / "run.json").write_text(json.dumps({"status": "interrupted", "val_cases": FOLDS[1]}))
    with caplog.at_level(logging.WARNING):
        bundle = layout.find_best()
    assert [row["name"] for row in bundle.ranking] == ["2d"]
    assert "configuration '3d_fullres': cross-validation is incomplete" in caplog.text
    with pytest.raises(ConfigError, match=r"(?s)configuration '3d_fullres'.*incomplete.*status 'interrupted'"):
        layout.find_best(configs=["3d_fullres"])


def test_no_crossval_at_all_is_a_clear_error(layout: Layout) -> None:
    (layout.runs / "2d" / "fold_0").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no configuration has crossval/crossval.json"):
        layout.find_best()
    with pytest.raises(ConfigError, match=r"configuration '2d'.*crossval.json not found"):
        layout.find_best(configs=["2d"])


# ---------------------------------------------------------------- ensembling prediction folders
def prediction_folder(folder: Path, probabilities: dict[str, np.ndarray], geometry: io.Geometry) -> Path:
    for case_id, p in probabilities.items():
        save_probabilities(folder / f"{case_id}.npz", p, list(LABELS.values()), list(LABELS))
        io.write_image(folder / f"{case_id}.nii.gz", np.argmax(p, axis=0).astype(np.uint8), geometry)
    return folder


def random_probabilities(seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).random((3, 4, 6, 5)).astype(np.float32)
    return raw / raw.sum(axis=0, keepdims=True)


def test_ensemble_folders_averages_probabilities(tmp_path: Path) -> None:
    placed = io.Geometry((0.8, 0.7, 2.5), (10.0, -3.5, 7.25), tuple(np.eye(3).ravel().tolist()))
    a = prediction_folder(tmp_path / "a", {"x": random_probabilities(1), "y": random_probabilities(2)}, placed)
    b = prediction_folder(tmp_path / "b", {"x": random_probabilities(3), "y": random_probabilities(4)}, io.Geometry.default(3))

    written = ensemble_folders([a, b], tmp_path / "out")

    assert written == [tmp_path / "out" / "x.nii.gz", tmp_path / "out" / "y.nii.gz"]
    expected = (np.load(a / "y.npz")["probabilities"].astype(np.float32) + np.load(b / "y.npz")["probabilities"]) / 2
    averaged, values, names = average_probabilities([tmp_path / "out" / "y.npz"])
    np.testing.assert_allclose(averaged, expected, atol=1e-3)
    label, geometry = io.read_label(written[1])
    np.testing.assert_array_equal(label, np.argmax(expected, axis=0))
    assert geometry.matches(placed) and values == [0, 1, 2] and names == list(LABELS)


def test_ensemble_folders_names_missing_cases_and_refuses_input_folders(tmp_path: Path) -> None:
    geometry = io.Geometry.default(3)
    a = prediction_folder(tmp_path / "a", {"x": random_probabilities(1), "y": random_probabilities(2)}, geometry)
    b = prediction_folder(tmp_path / "b", {"x": random_probabilities(3)}, geometry)
    with pytest.raises(ConfigError, match=r"b: missing y.npz"):
        ensemble_folders([a, b], tmp_path / "out")
    with pytest.raises(ConfigError, match="is one of the input folders"):
        ensemble_folders([a, b], a)
    assert not (tmp_path / "out").exists()


def test_average_refuses_mismatched_files(tmp_path: Path) -> None:
    save_probabilities(tmp_path / "a.npz", random_probabilities(1), [0, 1, 2], list(LABELS))
    save_probabilities(tmp_path / "b.npz", random_probabilities(2)[:, :2], [0, 1, 2], list(LABELS))
    save_probabilities(tmp_path / "c.npz", random_probabilities(3), [0, 1, 3], ["background", "vertebra", "rib"])
    with pytest.raises(ConfigError, match=r"b.npz: probabilities of shape \(3, 2, 6, 5\) differ"):
        average_probabilities([tmp_path / "a.npz", tmp_path / "b.npz"])
    with pytest.raises(ConfigError, match=r"c.npz: labels .*rib.* differ"):
        average_probabilities([tmp_path / "a.npz", tmp_path / "c.npz"])
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"d.npz: cannot be read"):
        average_probabilities([tmp_path / "d.npz"])
