"""The cascade 3d_lowres -> 3d_cascade_fullres (issue 14, item 1): planned whenever 3d_lowres is,
the first stage's one-hot out-of-fold prediction as extra input channels on the full-resolution
grid, training refused when those predictions are missing, and prediction running both stages."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from autoseg import api
from autoseg.cascade import RECORD, out_of_fold_folder, previous_stage_channels
from autoseg.config import load_plan
from autoseg.errors import ConfigError
from autoseg.io import read_label
from autoseg.preprocessing import load_case
from autoseg.workdir import Workdir

SMALL_GPU_GB = 1.2  # the memory budget that makes a CPU-sized large-field phantom "large" for its patch
FAST = {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "workers": 0, "num_folds": 3}


@pytest.fixture(scope="module")
def large_field(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    data = api.example("lumbar-ct", root / "data", cases=3, seed=0, large_field=True)
    plan, _ = api.plan(data, root / "work", gpu_memory_gb=SMALL_GPU_GB, configs=["3d_fullres", "3d_lowres"], workers=1)
    return {"root": root, "data": data, "work": root / "work", "plan": plan}


def _fake_out_of_fold(found) -> None:
    """The reference labels stand in for the first stage's out-of-fold predictions."""
    target = out_of_fold_folder(found["work"], "Dataset903_LumbarCT", "3d_lowres")
    target.mkdir(parents=True, exist_ok=True)
    for path in (found["data"] / "labelsTr").glob("*.nii.gz"):
        shutil.copy(path, target / path.name)


def test_the_cascade_is_planned_with_3d_lowres_and_takes_one_channel_per_foreground_class(large_field, tmp_path):
    plan = load_plan(large_field["work"] / "plans" / "Dataset903_LumbarCT" / "plan.json")
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plan.configurations)
    fullres, cascade = plan.config("3d_fullres"), plan.config("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and fullres.previous_stage is None
    assert cascade.network.in_channels == fullres.network.in_channels + 6  # L1-L5 and the sacrum
    assert (cascade.spacing, cascade.patch_size, cascade.batch_size) == (fullres.spacing, fullres.patch_size, fullres.batch_size)
    roomy, _ = api.plan(large_field["data"], tmp_path / "work", gpu_memory_gb=3.0, workers=1)
    assert "3d_lowres" not in roomy.configurations and "3d_cascade_fullres" not in roomy.configurations


def test_training_the_cascade_without_out_of_fold_predictions_is_refused_before_any_work(large_field):
    wd = Workdir(large_field["work"])
    with pytest.raises(ConfigError, match=r"out-of-fold predictions of 3d_lowres.*lacks 3.*autoseg train .* 3d_lowres all"):
        api.train(large_field["data"], "3d_cascade_fullres", 0, large_field["work"], **FAST)
    assert not wd.preprocessed_dir("Dataset903_LumbarCT", "3d_cascade_fullres").exists()
    assert not wd.run_dir("Dataset903_LumbarCT", "3d_cascade_fullres", 0).exists()


def test_the_extra_channels_are_the_one_hot_first_stage_prediction_on_the_fullres_grid(large_field):
    _fake_out_of_fold(large_field)
    folder = api.preprocess(large_field["data"], "3d_cascade_fullres", large_field["work"], workers=1)
    data, seg, properties = load_case(folder, "lct_000")
    assert data.shape[0] == 1 + 6
    one_hot = np.stack([seg[0] == v for v in range(1, 7)]).astype(np.float32)
    assert np.array_equal(data[1:], one_hot)  # a prediction equal to the labels lands exactly on them
    assert (folder / RECORD).is_file()
    api.preprocess(large_field["data"], "3d_cascade_fullres", large_field["work"], workers=1)  # up to date: kept
    assert load_case(folder, "lct_000")[0].shape[0] == 7
    labels, _ = read_label(large_field["data"] / "labelsTr" / "lct_000.nii.gz")
    direct = previous_stage_channels(labels, properties, large_field["plan"].config("3d_cascade_fullres"), range(1, 7))
    assert np.array_equal(direct, one_hot)


def test_previous_stage_channels_refuse_a_prediction_on_another_grid(large_field):
    properties = {"case_id": "x", "original_shape": [4, 5, 6]}
    with pytest.raises(ConfigError, match="first stage's prediction has shape"):
        previous_stage_channels(np.zeros((4, 5, 7), np.uint8), properties, large_field["plan"].config("3d_fullres"), [1])


@pytest.mark.slow
def test_a_cascade_model_predicts_with_both_stages_and_keeps_the_geometry(large_field, tmp_path, caplog):
    _fake_out_of_fold(large_field)
    api.train(large_field["data"], "3d_lowres", 0, large_field["work"], **FAST)
    cascade_run = api.train(large_field["data"], "3d_cascade_fullres", 0, large_field["work"], **FAST)
    test = api.example("lumbar-ct", tmp_path / "test", cases=1, seed=7, large_field=True)
    caplog.set_level("INFO")
    written = api.predict_folder(test / "imagesTr", tmp_path / "pred", [cascade_run], tta=False)
    assert "cascade: first stage 3d_lowres" in caplog.text
    labels, geometry = read_label(written[0])
    image, image_geometry = read_label(test / "imagesTr" / "lct_000_0000.nii.gz")
    assert geometry == image_geometry and labels.shape == image.shape
    exported = api.export_model(cascade_run, tmp_path / "cascade.zip")
    shutil.rmtree(Workdir(large_field["work"]).run_dir("Dataset903_LumbarCT", "3d_lowres", 0).parent)
    with pytest.raises(ConfigError, match="its first stage '3d_lowres' was not found"):
        api.predict_folder(test / "imagesTr", tmp_path / "pred2", [cascade_run], tta=False)

    # the exported cascade carries its first stage: it predicts alike with the workdir's copy gone
    with zipfile.ZipFile(exported) as archive:
        member = json.loads(archive.read("model.json"))["members"][0]
    assert member["checkpoints"] == ["3d_cascade_fullres/fold_0/checkpoint_final.pt"]
    assert member["first_stage"] == ["3d_lowres/fold_0/checkpoint_final.pt"]
    imported = api.import_model(exported, tmp_path / "elsewhere")
    again = api.predict_bundle_folder(test / "imagesTr", tmp_path / "pred3", imported, tta=False)
    assert np.array_equal(read_label(again[0])[0], labels)


@pytest.mark.slow  # about 4 minutes: three configurations cross-validated on large-field volumes
def test_find_best_ranks_the_cross_validated_cascade_with_the_other_configurations(large_field, tmp_path):
    """Cross-validate 3d_lowres (its out-of-fold predictions feed the cascade), then the cascade and
    3d_fullres: find-best ranks all three, and the bundle it writes predicts with both stages."""
    work = tmp_path / "work"
    api.plan(large_field["data"], work, gpu_memory_gb=SMALL_GPU_GB, configs=["3d_fullres", "3d_lowres"], workers=1)
    for config in ("3d_lowres", "3d_cascade_fullres", "3d_fullres"):
        api.cross_validate(large_field["data"], config, workdir=work, **FAST)
    bundle = api.find_best("Dataset903_LumbarCT", work, large_field["data"])
    ranked = {row["name"] for row in bundle.ranking}
    assert {"3d_lowres", "3d_cascade_fullres", "3d_fullres"} <= ranked
    cascade_row = next(row for row in bundle.ranking if row["name"] == "3d_cascade_fullres")
    assert 0.0 <= cascade_row["mean_foreground_dice"] <= 1.0
