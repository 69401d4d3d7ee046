"""Cross-validation folds: the dataset's own splits, seeded k-fold kept in the workdir, groups."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.dataset import load_dataset
from autoseg.errors import ConfigError, DatasetError
from autoseg.trainers.splits import fold_cases, group_ids, load_or_create_splits, make_splits

CUSTOM = [{"train": ["case_000", "case_001"], "val": ["case_002", "case_003"]},
          {"train": ["case_002", "case_003"], "val": ["case_000", "case_001"]}]


def tiny(make_dataset, num_cases: int = 4, **kwargs):
    """A dataset of 2D PNG cases: the cheapest files to write; splits never read them."""
    return load_dataset(make_dataset(num_cases=num_cases, shape=(6, 5), file_ending=".png", num_labels=2, **kwargs))


def all_folds(dataset, splits_path: Path) -> list[tuple[list[str], list[str]]]:
    folds, fold = [], 0
    while True:
        try:
            folds.append(fold_cases(dataset, splits_path, str(fold)))
        except ConfigError:
            return folds
        fold += 1


def test_dataset_splits_final_is_honoured(make_dataset, tmp_path):
    dataset = tiny(make_dataset)
    (dataset.root / "splits_final.json").write_text(json.dumps(CUSTOM))
    dataset = load_dataset(dataset.root)
    workdir_splits = tmp_path / "work" / "splits.json"

    assert fold_cases(dataset, workdir_splits, "1") == (["case_002", "case_003"], ["case_000", "case_001"])
    assert len(all_folds(dataset, workdir_splits)) == 2
    assert not workdir_splits.exists()  # the dataset's own file is the record; nothing is copied


def test_seeded_folds_partition_the_cases_and_are_written_once(make_dataset, tmp_path):
    dataset = tiny(make_dataset, num_cases=7)
    ids = {c.case_id for c in dataset.cases}
    first = tmp_path / "a" / "splits.json"

    folds = all_folds(dataset, first)

    assert len(folds) == 5
    vals = [v for _, v in folds]
    assert sorted(c for v in vals for c in v) == sorted(ids)  # every case validated exactly once
    for train, val in folds:
        assert set(train) | set(val) == ids and not set(train) & set(val)
    assert json.loads(first.read_text())[0]["val"] == folds[0][1]
    # same seed, another workdir: the same folds
    assert all_folds(dataset, tmp_path / "b" / "splits.json") == folds


def test_workdir_splits_are_reused_not_remade(make_dataset, tmp_path):
    dataset = tiny(make_dataset)
    splits_path = tmp_path / "splits.json"
    fold_cases(dataset, splits_path, "0")
    splits_path.write_text(json.dumps(CUSTOM))  # e.g. edited by hand after the first run

    assert fold_cases(dataset, splits_path, "0") == (["case_000", "case_001"], ["case_002", "case_003"])
    assert json.loads(splits_path.read_text()) == CUSTOM


def test_groups_from_dataset_json_keep_each_patient_on_one_side(make_dataset, tmp_path):
    groups = {f"case_{i:03d}": f"patient{i // 2}" for i in range(8)}  # two cases per patient
    dataset = tiny(make_dataset, num_cases=8, extra_json={"groups": groups})

    folds = all_folds(dataset, tmp_path / "splits.json")

    assert len(folds) == 4  # 4 patients: at most 4 folds
    for train, val in folds:
        assert len(val) == 2 and groups[val[0]] == groups[val[1]]
        assert not {groups[c] for c in train} & {groups[c] for c in val}


def test_groups_stay_together_when_cases_come_unsorted(tmp_path):
    case_ids = ["p2_b", "p1_a", "p3_a", "p2_a", "p1_b", "p3_b"]
    groups = group_ids(case_ids, None, r"^(p\d+)_")
    assert groups == ["p2", "p1", "p3", "p2", "p1", "p3"]

    splits = load_or_create_splits(case_ids, None, tmp_path / "splits.json", num_folds=3, groups=groups)

    for split in splits:
        patients_in_val = {c.split("_")[0] for c in split["val"]}
        assert len(split["val"]) == 2 and len(patients_in_val) == 1
        assert not patients_in_val & {c.split("_")[0] for c in split["train"]}


def test_fold_full_uses_every_case_for_training_and_validation(make_dataset, tmp_path):
    dataset = tiny(make_dataset, num_cases=3)
    ids = sorted(c.case_id for c in dataset.cases)
    splits_path = tmp_path / "splits.json"

    assert fold_cases(dataset, splits_path, "full") == (ids, ids)
    assert not splits_path.exists()


@pytest.mark.parametrize("fold", ["4", "x", "-1", "1.0"])
def test_a_fold_that_does_not_exist_is_a_config_error(make_dataset, tmp_path, fold):
    dataset = tiny(make_dataset)  # 4 cases: folds 0-3
    with pytest.raises(ConfigError, match=rf"fold '{fold}'.*folds 0-3, 'all'"):
        fold_cases(dataset, tmp_path / "splits.json", fold)


def test_dataset_splits_naming_unknown_cases_are_a_dataset_error(make_dataset):
    root = make_dataset(num_cases=4, shape=(6, 5), file_ending=".png", num_labels=2)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_999"], "val": ["case_001"]}]))
    with pytest.raises(DatasetError, match="case_999"):
        load_dataset(root)


def test_workdir_splits_naming_unknown_cases_are_a_dataset_error(make_dataset, tmp_path):
    dataset = tiny(make_dataset)
    splits_path = tmp_path / "splits.json"
    splits_path.write_text(json.dumps([{"train": ["case_000", "case_999"], "val": ["case_001"]}]))
    with pytest.raises(DatasetError, match=r"splits\.json.*case_999"):
        fold_cases(dataset, splits_path, "0")


def test_workdir_splits_of_an_older_case_list_are_refused(make_dataset, tmp_path):
    splits_path = tmp_path / "splits.json"
    fold_cases(tiny(make_dataset, num_cases=4), splits_path, "0")
    grown = tiny(make_dataset, num_cases=5)  # a case was added to the dataset since
    with pytest.raises(DatasetError, match=r"different set of cases.*case_004.*Delete the file"):
        fold_cases(grown, splits_path, "0")


@pytest.mark.parametrize("content", ['{"train": []}', "[]", '[{"train": "case_000", "val": []}]'])
def test_malformed_splits_file_is_a_dataset_error(make_dataset, tmp_path, content):
    splits_path = tmp_path / "splits.json"
    splits_path.write_text(content)
    with pytest.raises(DatasetError, match="expected a non-empty list"):
        fold_cases(tiny(make_dataset), splits_path, "0")


def test_a_fold_without_validation_cases_is_a_config_error(make_dataset, tmp_path):
    root = make_dataset(num_cases=4, shape=(6, 5), file_ending=".png", num_labels=2)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001", "case_002"], "val": []}]))
    with pytest.raises(ConfigError, match="fold 0 has no val cases"):
        fold_cases(load_dataset(root), tmp_path / "splits.json", "0")


def test_cross_validation_needs_two_groups():
    with pytest.raises(ConfigError, match="at least 2"):
        make_splits(["a", "b"], groups=["p", "p"])
