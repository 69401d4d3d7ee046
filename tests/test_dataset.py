"""Dataset folders: case discovery, and one test per kind of problem validate_dataset must report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset import Case, case_images_for, load_dataset, validate_dataset
from autoseg.errors import ConfigError, DatasetError
from autoseg.io import Geometry, read_image, write_image

SHARED_DATASETS = ("Dataset601_SpineXrayAP", "Dataset602_SpineXrayAPLat", "Dataset611_LumbarCT",
                   "Dataset621_SkeletonCT", "Dataset631_CordGM")


def problems_of(root: Path, check=validate_dataset) -> list[str]:
    with pytest.raises(DatasetError) as info:
        check(root)
    assert str(root) in str(info.value)  # the header names the dataset folder
    return info.value.problems


def only_problem(root: Path, check=validate_dataset) -> str:
    problems = problems_of(root, check)
    assert len(problems) == 1, problems
    return problems[0]


def edit_json(root: Path, **changes) -> None:
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


def rewrite(path: Path, transform) -> None:
    """Replace an image file's content by transform(array, geometry) -> (array, geometry)."""
    array, geometry = read_image(path)
    write_image(path, *transform(array[0], geometry))


# ---------------------------------------------------------------- clean datasets
def test_clean_3d_dataset_validates_and_lists_cases(make_dataset):
    root = make_dataset(num_cases=3, num_channels=2, num_test=1)
    dataset = validate_dataset(root)
    assert dataset.name == "Dataset001_Tiny"
    assert dataset.channel_names == ("chan0", "chan1")
    assert dataset.labels == {"background": 0, "label1": 1, "label2": 2}
    assert (dataset.file_ending, dataset.num_training) == (".nii.gz", 3)
    assert [c.case_id for c in dataset.cases] == ["case_000", "case_001", "case_002"]
    assert dataset.cases[1] == Case("case_001", (root / "imagesTr/case_001_0000.nii.gz",
                                                 root / "imagesTr/case_001_0001.nii.gz"), root / "labelsTr/case_001.nii.gz")
    assert dataset.test_cases == (Case("case_003", (root / "imagesTs/case_003_0000.nii.gz",
                                                    root / "imagesTs/case_003_0001.nii.gz"), None),)
    assert dataset.splits_file is None and dataset.groups is None
    assert load_dataset(root) == dataset


def test_clean_2d_png_dataset_validates(make_dataset):
    root = make_dataset(shape=(8, 9), file_ending=".png", num_labels=4)
    assert len(validate_dataset(root).cases) == 3


def test_rgb_png_counts_as_three_channels_when_declared(make_dataset):
    root = make_dataset(shape=(8, 9), file_ending=".png", extra_json={"channel_names": {"0": "R", "1": "G", "2": "B"}})
    for image in (root / "imagesTr").iterdir():
        gray = read_image(image)[0][0]
        write_image(image, np.stack([gray, gray // 2, gray // 3]), Geometry.default(2))
    dataset = validate_dataset(root)
    assert dataset.cases[0].images == (root / "imagesTr/case_000_0000.png",)
    assert case_images_for(root / "imagesTr", "case_000", 3, ".png") == (root / "imagesTr/case_000_0000.png",)


def test_case_images_for_lists_one_file_per_channel(tmp_path):
    names = [p.name for p in case_images_for(tmp_path, "a", 3, ".nii.gz")]
    assert names == ["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"]


def test_load_dataset_reads_groups_and_splits_without_reading_pixels(make_dataset):
    root = make_dataset(num_cases=2, extra_json={"groups": {"case_000": "p1", "case_001": 7}})
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000"], "val": ["case_001"]}]))
    (root / "imagesTr/case_000_0000.nii.gz").write_bytes(b"not an image")  # only a full validation reads it
    dataset = load_dataset(root)
    assert dataset.groups == {"case_000": "p1", "case_001": "7"}
    assert dataset.splits_file == root / "splits_final.json"


def test_progress_is_advanced_once_per_case(make_dataset):
    root = make_dataset(num_cases=3, num_test=2)
    steps: list[int] = []
    validate_dataset(root, workers=2, progress=steps.append)
    assert steps == [1] * 5


# ---------------------------------------------------------------- dataset.json problems
def test_missing_dataset_json(make_dataset):
    root = make_dataset()
    (root / "dataset.json").unlink()
    assert "dataset.json: file not found" in only_problem(root, load_dataset)


def test_invalid_json(make_dataset):
    root = make_dataset()
    (root / "dataset.json").write_text('{"labels": {')
    assert "dataset.json: not valid JSON" in only_problem(root)


@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining", "file_ending"])
def test_missing_key(make_dataset, key):
    root = make_dataset()
    edit_json(root, **{key: None})
    assert f"dataset.json: missing key '{key}'" in problems_of(root)[0]


def test_labels_not_consecutive(make_dataset):
    root = make_dataset()
    edit_json(root, labels={"background": 0, "a": 1, "b": 3})
    problem = only_problem(root)
    assert "dataset.json: labels values must be consecutive from 0" in problem and "[0, 1, 3]" in problem


@pytest.mark.parametrize("changes, expected", [
    ({"channel_names": {"1": "CT"}}, 'channel_names keys must be "0"'),
    ({"labels": {"background": 0, "spine": [1, 2]}}, "region-based labels are not supported"),
    ({"file_ending": ".gif"}, "file_ending must be one of"),
    ({"numTraining": "3"}, "numTraining must be a whole number"),
])
def test_mistyped_keys(make_dataset, changes, expected):
    root = make_dataset()
    edit_json(root, **changes)
    assert expected in only_problem(root, load_dataset)


def test_num_training_differs_from_cases_found(make_dataset):
    root = make_dataset(num_cases=3)
    edit_json(root, numTraining=5)
    assert "numTraining is 5 but imagesTr/labelsTr hold 3 case(s)" in only_problem(root, load_dataset)


# ---------------------------------------------------------------- case files
def test_missing_channel_file(make_dataset):
    root = make_dataset(num_channels=2)
    (root / "imagesTr/case_001_0001.nii.gz").unlink()
    assert only_problem(root, load_dataset).startswith("imagesTr/case_001_0001.nii.gz: missing")


def test_missing_label_file(make_dataset):
    root = make_dataset()
    (root / "labelsTr/case_002.nii.gz").unlink()
    edit_json(root, numTraining=3)
    assert only_problem(root, load_dataset).startswith("labelsTr/case_002.nii.gz: label missing")


def test_label_without_images(make_dataset):
    root = make_dataset()
    (root / "imagesTr/case_000_0000.nii.gz").unlink()
    assert only_problem(root, load_dataset).startswith("labelsTr/case_000.nii.gz: label has no image files")


def test_channel_index_beyond_declared_channels(make_dataset):
    root = make_dataset()
    (root / "imagesTr/case_000_0000.nii.gz").rename(root / "imagesTr/case_000_0001.nii.gz")
    problems = problems_of(root, load_dataset)
    assert any(p.startswith("imagesTr/case_000_0001.nii.gz: channel index 1") for p in problems)
    assert any(p.startswith("imagesTr/case_000_0000.nii.gz: missing") for p in problems)


def test_wrong_ending_and_missing_channel_suffix(make_dataset):
    root = make_dataset()
    rewrite(root / "imagesTr/case_000_0000.nii.gz", lambda a, g: (a, g))
    (root / "imagesTr/case_000_0000.nii.gz").rename(root / "imagesTr/case_000_0000.nrrd")
    write_image(root / "labelsTr/case_000.nii.gz", np.zeros((4, 6, 5), np.uint8), Geometry.default(3, (3.0, 0.8, 0.8)))
    (root / "imagesTr/notes.txt").write_text("ignored: not an image")
    write_image(root / "imagesTr/stray.nii.gz", np.zeros((4, 6, 5)), Geometry.default(3))
    problems = problems_of(root, load_dataset)
    assert any(p.startswith("imagesTr/case_000_0000.nrrd: ending '.nrrd' differs") for p in problems)
    assert any(p.startswith("imagesTr/stray.nii.gz: name lacks the 4-digit channel index") for p in problems)
    assert not any("notes.txt" in p for p in problems)


def test_groups_and_splits_must_name_training_cases(make_dataset):
    root = make_dataset(num_cases=2, extra_json={"groups": {"case_000": "p1", "case_9": "p2"}})
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "ghost"], "val": ["case_000"]}]))
    problems = problems_of(root, load_dataset)
    assert any("groups names case(s) ['case_9']" in p for p in problems)
    assert any("groups lacks case(s) ['case_001']" in p for p in problems)
    assert any(p.startswith("splits_final.json: fold 0 names unknown case(s) ['ghost']") for p in problems)
    assert any(p.startswith("splits_final.json: fold 0 has case(s) ['case_000'] in both") for p in problems)


# ---------------------------------------------------------------- file contents
def test_shape_mismatch_between_channel_and_label(make_dataset):
    root = make_dataset()
    rewrite(root / "imagesTr/case_001_0000.nii.gz", lambda a, g: (a[:, :, :4], g))
    problem = only_problem(root)
    assert problem.startswith("imagesTr/case_001_0000.nii.gz: shape (4, 6, 4) differs from labelsTr/case_001.nii.gz")


def test_geometry_mismatch_between_channel_and_label(make_dataset):
    root = make_dataset()
    moved = Geometry((0.8, 0.8, 3.0), (0.0, 0.0, 10.0), tuple(np.eye(3).ravel()))
    rewrite(root / "imagesTr/case_002_0000.nii.gz", lambda a, g: (a, moved))
    problem = only_problem(root)
    assert problem.startswith("imagesTr/case_002_0000.nii.gz: geometry differs from labelsTr/case_002.nii.gz")
    assert "origin" in problem and "spacing" not in problem


def test_undeclared_label_values(make_dataset):
    root = make_dataset(num_labels=3)
    rewrite(root / "labelsTr/case_000.nii.gz", lambda a, g: (np.where(a == 2, 7, a).astype(np.uint8), g))
    problem = only_problem(root)
    assert problem.startswith("labelsTr/case_000.nii.gz: label value(s) [7] not declared")


def test_nan_in_image(make_dataset):
    root = make_dataset(file_ending=".nrrd")  # NIfTI readers turn NaN into 0 (see test_io), NRRD keeps it
    def add_nan(a, g):
        a = a.copy()
        a[0, 0, :2] = [np.nan, np.inf]
        return a, g
    rewrite(root / "imagesTr/case_001_0000.nrrd", add_nan)
    assert only_problem(root).startswith("imagesTr/case_001_0000.nrrd: 2 NaN/inf value(s)")


def test_corrupt_file(make_dataset):
    root = make_dataset()
    (root / "labelsTr/case_001.nii.gz").write_bytes(b"\x00garbage")
    problem = only_problem(root)
    assert problem.startswith("labelsTr/case_001.nii.gz: cannot be read as an image")
    assert str(root) not in problem  # paths are shortened to the dataset folder


def test_rgb_file_in_grayscale_dataset(make_dataset):
    root = make_dataset(shape=(8, 9), file_ending=".png")
    rewrite(root / "imagesTr/case_002_0000.png", lambda a, g: (np.stack([a, a, a]), g))
    assert only_problem(root).startswith("imagesTr/case_002_0000.png: has 3 color components, expected grayscale")


def test_4d_file_where_one_channel_is_expected(make_dataset):
    root = make_dataset()
    rewrite(root / "imagesTr/case_000_0000.nii.gz", lambda a, g: (np.stack([a, a]), g))
    assert only_problem(root).startswith("imagesTr/case_000_0000.nii.gz: has 2 channels (4D or vector image)")


def test_colour_layout_with_too_few_components(make_dataset):
    root = make_dataset(shape=(8, 9), file_ending=".png", num_channels=2)
    (root / "imagesTr/case_000_0001.png").unlink()  # a lone grayscale _0000 cannot carry 2 channels
    assert only_problem(root).startswith("imagesTr/case_000_0000.png: has 1 component(s), expected 2")


def test_mixed_2d_and_3d_cases(make_dataset):
    root = make_dataset(shape=(4, 6, 5))
    for path in (root / "imagesTr/case_001_0000.nii.gz", root / "labelsTr/case_001.nii.gz"):
        rewrite(path, lambda a, g: (a[0], Geometry.default(2)))
    assert only_problem(root).startswith("cases mix 2D and 3D images (2D: ['case_001'], 3D: ['case_000', 'case_002'])")


def test_all_problems_are_reported_at_once_in_case_order(make_dataset):
    root = make_dataset(num_cases=4, num_test=1)
    (root / "imagesTr/case_003_0000.nii.gz").write_bytes(b"broken")
    rewrite(root / "labelsTr/case_000.nii.gz", lambda a, g: (np.full_like(a, 9), g))
    (root / "imagesTs/case_004_0000.nii.gz").write_bytes(b"broken")
    edit_json(root, description="extras are allowed")
    for workers in (1, 2):
        problems = problems_of(root, lambda r: validate_dataset(r, workers=workers))
        assert [p.split(":")[0] for p in problems] == [
            "labelsTr/case_000.nii.gz", "imagesTr/case_003_0000.nii.gz", "imagesTs/case_004_0000.nii.gz"]


def test_structural_and_content_problems_are_reported_together(make_dataset):
    root = make_dataset()
    edit_json(root, numTraining=4)
    (root / "labelsTr/case_001.nii.gz").write_bytes(b"broken")
    problems = problems_of(root)
    assert len(problems) == 2 and "numTraining is 4" in problems[0] and problems[1].startswith("labelsTr/case_001")


def test_not_a_folder_and_bad_worker_count(tmp_path, make_dataset):
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        validate_dataset(make_dataset(), workers=0)


def test_missing_training_folders(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 0, "file_ending": ".nii.gz"}))
    problems = problems_of(tmp_path, load_dataset)
    assert problems == ["imagesTr/: folder missing; a dataset needs imagesTr/ and labelsTr/",
                        "labelsTr/: folder missing; a dataset needs imagesTr/ and labelsTr/"]


# ---------------------------------------------------------------- real data
@pytest.mark.shared
@pytest.mark.parametrize("name", SHARED_DATASETS)
def test_shared_datasets_load(shared_data, name):
    dataset = load_dataset(shared_data / name)
    assert dataset.name == name
    assert len(dataset.cases) == dataset.num_training > 0
    assert all(len(case.images) == len(dataset.channel_names) for case in dataset.cases)
