"""Training data pipeline: patch sampling, augmentation, multi-process loading (tiny cases)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.data import (
    AugmentationConfig,
    PatchSampler,
    build_transforms,
    make_loader,
    no_augmentation_transforms,
    pre_augmentation_size,
    should_use_dummy_2d,
)
from autoseg.data.sampling import choose_patch_start, read_box
from autoseg.data.transforms import downsample_nearest
from autoseg.errors import ConfigError, PreprocessingError
from autoseg.io import Geometry

SCALES_2D = [(1, 1), (0.5, 0.5), (0.25, 0.25)]


def write_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray) -> None:
    """A case in the preprocessed format: image (C, *s), label (1, *s), properties, class locations."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = seg.astype(np.int8)
    np.save(folder / f"{case_id}.npy", image.astype(np.float32))
    np.save(folder / f"{case_id}_seg.npy", seg.astype(np.int8))
    locations = {str(v): np.argwhere(seg[0] == v).astype(np.int32) for v in np.unique(seg) if v >= 1}
    np.savez(folder / f"{case_id}_locations.npz", **locations)
    spatial = list(image.shape[1:])
    spacing = [1.0] * len(spatial)
    (folder / f"{case_id}.json").write_text(json.dumps({
        "case_id": case_id, "original_shape": spatial, "original_geometry": Geometry.default(len(spatial), spacing).to_dict(),
        "crop_bbox": [[0, n] for n in spatial], "cropped_shape": spatial, "resampled_shape": spatial,
        "spacing_before": spacing, "spacing_after": spacing, "class_locations_file": f"{case_id}_locations.npz",
    }))


def corner_blob_case(folder: Path, case_id: str = "blob", shape=(20, 40, 40)) -> None:
    """Random intensities; label 1 only in a 2x2x2 corner blob, which random patches rarely hit."""
    rng = np.random.default_rng(0)
    seg = np.zeros((1, *shape), np.int8)
    seg[0, :2, :2, :2] = 1
    write_case(folder, case_id, rng.normal(size=(1, *shape)), seg)


def slab_case(folder: Path, case_id: str = "slab", shape=(12, 32, 32), labels=(0, 1, 2)) -> None:
    """Image value z+1 in slice z; label values in thick slabs along x, so every patch holds several."""
    image = np.broadcast_to(np.arange(1, shape[0] + 1, dtype=np.float32)[:, None, None], shape)[None]
    seg = np.zeros((1, *shape), np.int8)
    for i, value in enumerate(labels):
        seg[0, :, :, i * shape[2] // len(labels):] = value
    write_case(folder, case_id, image, seg)


def foreground_batches(sampler: PatchSampler, n: int) -> list[np.ndarray]:
    """Per batch, which samples contain foreground."""
    return [(sampler.sample_batch()["target"] > 0).reshape(sampler.batch_size, -1).any(axis=1) for _ in range(n)]


# ---------------------------------------------------------------- sampling
def test_forced_foreground_puts_foreground_in_the_last_sample_of_every_batch(tmp_path):
    corner_blob_case(tmp_path)
    sampler = PatchSampler(tmp_path, ["blob"], (8, 16, 16), batch_size=3, oversample_foreground=1 / 3, seed=1)
    hits = foreground_batches(sampler, 60)
    assert all(h[-1] for h in hits)  # round(3 * 2/3) = 2 random samples, the third is forced

    unforced = PatchSampler(tmp_path, ["blob"], (8, 16, 16), batch_size=3, oversample_foreground=0.0, seed=1)
    unforced_hits = sum(h.any() for h in foreground_batches(unforced, 60))
    assert unforced_hits < 20  # the blob is hit only by patches starting at the very corner


def test_forced_samples_pick_each_present_class(tmp_path):
    seg = np.zeros((1, 16, 32, 32), np.int8)
    seg[0, 4:12, 4:28, 4:28] = 1  # large class
    seg[0, 15, 31, 31] = 2  # one voxel, at the far corner
    write_case(tmp_path, "two", np.ones((1, 16, 32, 32)), seg)
    sampler = PatchSampler(tmp_path, ["two"], (4, 8, 8), batch_size=2, oversample_foreground=0.5, seed=3)
    with_class_2 = sum(bool((sampler.sample_batch()["target"][-1] == 2).any()) for _ in range(60))
    assert 15 <= with_class_2 <= 45  # class chosen uniformly, not by voxel count


def test_case_smaller_than_patch_is_zero_padded(tmp_path):
    image = np.full((2, 5, 6, 7), 3.0)
    write_case(tmp_path, "small", image, np.ones((1, 5, 6, 7)))
    batch = PatchSampler(tmp_path, ["small"], (8, 16, 16), batch_size=4, seed=0).sample_batch()
    assert batch["data"].shape == (4, 2, 8, 16, 16) and batch["data"].dtype == np.float32
    assert batch["target"].shape == (4, 1, 8, 16, 16) and batch["target"].dtype == np.int16
    # the whole case lies inside every patch, the rest is padding
    assert (np.count_nonzero(batch["data"].reshape(4, -1), axis=1) == 2 * 5 * 6 * 7).all()
    assert (np.count_nonzero(batch["target"].reshape(4, -1), axis=1) == 5 * 6 * 7).all()


def test_2d_network_on_3d_cases_samples_axial_slices(tmp_path):
    seg = np.zeros((1, 6, 20, 20), np.int8)
    seg[0, 3, 10, 10] = 1  # foreground only in slice 3
    image = np.arange(1, 7, dtype=np.float32)[None, :, None, None] * np.ones((1, 6, 20, 20))
    write_case(tmp_path, "vol", image, seg)
    sampler = PatchSampler(tmp_path, ["vol"], (16, 16), batch_size=2, oversample_foreground=0.5, seed=0)
    seen_slices = set()
    for _ in range(20):
        batch = sampler.sample_batch()
        assert batch["data"].shape == (2, 1, 16, 16) and batch["target"].shape == (2, 1, 16, 16)
        slice_values = [np.unique(sample) for sample in batch["data"]]
        assert all(len(v) == 1 for v in slice_values)  # each patch is one whole axial slice
        seen_slices.update(int(v[0]) for v in slice_values)
        assert slice_values[-1][0] == 4 and batch["target"][-1].any()  # forced: the slice with foreground
    assert len(seen_slices) > 2  # random samples visit other slices


def test_sampling_is_deterministic_for_a_seed(tmp_path):
    corner_blob_case(tmp_path)
    slab_case(tmp_path)
    args = (tmp_path, ["blob", "slab"], (8, 16, 16), 3)
    first, second, other = PatchSampler(*args, seed=7), PatchSampler(*args, seed=7), PatchSampler(*args, seed=8)
    for _ in range(3):
        a, b, c = first.sample_batch(), second.sample_batch(), other.sample_batch()
        assert a["case_ids"] == b["case_ids"]
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["target"], b["target"])
    assert not np.array_equal(a["data"], c["data"])


def test_pre_augmentation_sample_is_centred_on_the_patch(tmp_path):
    slab_case(tmp_path, shape=(12, 32, 32))
    sampler = PatchSampler(tmp_path, ["slab"], (4, 8, 8), 1, oversample_foreground=0.0, seed=0, sample_size=(8, 16, 16))
    batch = sampler.sample_batch()
    assert batch["data"].shape == (1, 1, 8, 16, 16)
    centre = batch["data"][0, 0, 2:6, 4:12, 4:12]
    assert np.count_nonzero(centre) == centre.size  # the patch itself always lies inside the case


def test_foreground_start_keeps_the_voxel_inside_the_patch():
    rng = np.random.default_rng(0)
    for voxel in [(0, 0), (19, 39), (10, 5)]:
        for _ in range(50):
            start = choose_patch_start(rng, (20, 40), (8, 16), voxel)
            assert all(s <= v < s + p for s, v, p in zip(start, voxel, (8, 16)))
            assert 0 <= start[0] <= 12 and 0 <= start[1] <= 24


def test_read_box_pads_outside_the_array():
    array = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4)
    box = read_box(array, (-1, 2), (3, 4), np.float32)
    np.testing.assert_array_equal(box[0], [[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]])


def test_missing_case_files_fail_at_construction(tmp_path):
    slab_case(tmp_path)
    (tmp_path / "slab_locations.npz").unlink()
    with pytest.raises(PreprocessingError, match="slab_locations.npz"):
        PatchSampler(tmp_path, ["slab"], (4, 8, 8), 2)


# ---------------------------------------------------------------- augmentation
def augmented(tmp_path, config, patch, mirror_axes, scales, seed=0, labels=(0, 1, 2)):
    slab_case(tmp_path, labels=labels)
    sampler = PatchSampler(tmp_path, ["slab"], patch, 4, seed=seed, sample_size=pre_augmentation_size(patch, config))
    np.random.seed(seed)  # batchgenerators draws from the global state
    return build_transforms(config, patch, mirror_axes, scales)(**sampler.sample_batch())


def test_augmented_2d_batch_has_patch_shape_and_deep_supervision_targets(tmp_path):
    config = AugmentationConfig(rotation_p=1.0, scaling_p=1.0, noise_p=1.0, blur_p=1.0, low_resolution_p=1.0, gamma_p=1.0)
    batch = augmented(tmp_path, config, (16, 16), (0, 1), SCALES_2D)
    assert batch["data"].shape == (4, 1, 16, 16) and batch["data"].dtype == np.float32
    assert [t.shape for t in batch["target"]] == [(4, 1, 16, 16), (4, 1, 8, 8), (4, 1, 4, 4)]
    assert all(t.dtype == np.int16 for t in batch["target"]) and "seg" not in batch
    assert batch["case_ids"] == ["slab"] * 4


def test_augmented_3d_and_dummy_2d_shapes(tmp_path):
    batch = augmented(tmp_path, AugmentationConfig(rotation_p=1.0, scaling_p=1.0), (8, 16, 16), (0, 1, 2),
                      [(1, 1, 1), (1, 0.5, 0.5)])
    assert batch["data"].shape == (4, 1, 8, 16, 16)
    assert [t.shape for t in batch["target"]] == [(4, 1, 8, 16, 16), (4, 1, 8, 8, 8)]
    dummy = AugmentationConfig(rotation_p=1.0, scaling_p=1.0, low_resolution_p=1.0, dummy_2d=True)
    batch = augmented(tmp_path, dummy, (4, 16, 16), (1, 2), None)
    assert batch["data"].shape == (4, 1, 4, 16, 16) and batch["target"][0].shape == (4, 1, 4, 16, 16)


def test_dummy_2d_rotation_stays_in_plane(tmp_path):
    """Slice z holds the constant z+1: rotating in-plane keeps each slice's typical value an integer
    (only borders blend with padding), while tilting slices into each other would mix them."""
    only_rotation = dict(rotation_p=1.0, scaling_p=0.0, noise_p=0, blur_p=0, brightness_p=0, contrast_p=0,
                         low_resolution_p=0, gamma_p=0, inverted_gamma_p=0)
    for dummy_2d, stays_in_plane in [(True, True), (False, False)]:
        config = AugmentationConfig(**only_rotation, dummy_2d=dummy_2d)
        data = augmented(tmp_path, config, (4, 16, 16), (), None)["data"][:, 0]
        medians = np.median(data.reshape(*data.shape[:2], -1), axis=2)
        assert np.allclose(medians, np.round(medians), atol=1e-3) == stays_in_plane


def test_spatial_augmentation_keeps_only_valid_label_values(tmp_path):
    config = AugmentationConfig(rotation_p=1.0, scaling_p=1.0)
    for seed in range(3):
        batch = augmented(tmp_path, config, (8, 16, 16), (0, 1, 2), [(1, 1, 1), (0.5, 0.5, 0.5)], seed=seed,
                          labels=(0, 3, 7))
        for target in batch["target"]:
            assert set(np.unique(target)) <= {0, 3, 7}
        assert len(np.unique(batch["target"][0])) >= 2


def test_validation_transforms_centre_crop_without_changing_values(tmp_path):
    slab_case(tmp_path)
    sampler = PatchSampler(tmp_path, ["slab"], (4, 8, 8), 2, seed=0, sample_size=(8, 12, 12))
    raw = sampler.reseeded(5).sample_batch()
    out = no_augmentation_transforms((4, 8, 8), [(1, 1, 1), (1, 0.5, 0.5)])(**sampler.reseeded(5).sample_batch())
    np.testing.assert_array_equal(out["data"], raw["data"][:, :, 2:6, 2:10, 2:10])
    np.testing.assert_array_equal(out["target"][0], raw["target"][:, :, 2:6, 2:10, 2:10])
    assert out["target"][1].shape == (2, 1, 4, 4, 4)


def test_downsample_nearest_picks_existing_voxels():
    labels = np.arange(16, dtype=np.int16).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(downsample_nearest(labels, (2, 2))[0, 0], [[5, 7], [13, 15]])


def test_dummy_2d_rule_and_config_validation():
    assert should_use_dummy_2d((8, 64, 64), (5.0, 0.8, 0.8))
    assert not should_use_dummy_2d((64, 64, 8), (0.8, 0.8, 5.0))  # coarse axis is not the slice axis
    assert not should_use_dummy_2d((32, 32, 32), (2.0, 1.0, 1.0))
    assert not should_use_dummy_2d((64, 64), (5.0, 1.0))
    with pytest.raises(ConfigError, match="rotation_p"):
        AugmentationConfig(rotation_p=1.5)
    with pytest.raises(ConfigError, match="scale"):
        build_transforms(AugmentationConfig(), (16, 16), (0, 1), [(1, 1, 1)])


# ---------------------------------------------------------------- loader
def loader_for(folder, case_ids, num_workers, seed=0, start_method="fork", **kwargs):
    """A loader over 3D patches; tests fork workers (fast) except where spawn itself is under test."""
    patch = (8, 16, 16)
    sampler = PatchSampler(folder, case_ids, patch, 2, seed=0)
    transforms = build_transforms(AugmentationConfig(), patch, (0, 1, 2), [(1, 1, 1), (0.5, 0.5, 0.5)])
    return make_loader(sampler, transforms, num_workers=num_workers, seed=seed, start_method=start_method, **kwargs)


def test_workers_give_the_same_stream_shapes_and_are_reproducible(tmp_path):
    slab_case(tmp_path)
    corner_blob_case(tmp_path)
    with loader_for(tmp_path, ["slab", "blob"], 0) as local:
        local_batches = [next(local) for _ in range(3)]
    with loader_for(tmp_path, ["slab", "blob"], 1) as one, loader_for(tmp_path, ["slab", "blob"], 2) as two:
        one_batches = [next(one) for _ in range(3)]
        two_batches = [next(two) for _ in range(3)]
    for a, b, c in zip(local_batches, one_batches, two_batches):
        assert isinstance(a["data"], torch.Tensor) and a["data"].dtype == torch.float32
        assert a["data"].shape == c["data"].shape == (2, 1, 8, 16, 16)
        assert [t.shape for t in a["target"]] == [t.shape for t in c["target"]] == [(2, 1, 8, 16, 16), (2, 1, 4, 8, 8)]
        # worker 0's stream is the in-process stream
        assert torch.equal(a["data"], b["data"]) and all(torch.equal(x, y) for x, y in zip(a["target"], b["target"]))


def test_in_process_loader_leaves_global_numpy_random_state_alone(tmp_path):
    slab_case(tmp_path)
    with loader_for(tmp_path, ["slab"], 0) as loader:
        np.random.seed(5)
        expected = np.random.rand()
        np.random.seed(5)
        next(loader)
        assert np.random.rand() == expected


def test_corrupt_case_surfaces_from_a_worker_naming_the_case(tmp_path):
    slab_case(tmp_path)
    slab_case(tmp_path, "broken_case")
    (tmp_path / "broken_case.npy").write_bytes(b"this is not a numpy file")
    started = time.monotonic()
    with loader_for(tmp_path, ["broken_case"], 2, start_method="spawn") as loader:
        with pytest.raises(PreprocessingError, match="broken_case"):
            next(loader)
        with pytest.raises(PreprocessingError):  # stays failed instead of hanging on a dead worker
            next(loader)
    assert time.monotonic() - started < 15


def test_worker_killed_by_a_signal_surfaces(tmp_path):
    slab_case(tmp_path)
    with loader_for(tmp_path, ["slab"], 1, num_cached=1) as loader:
        next(loader)
        os.kill(loader._workers[0].pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(PreprocessingError, match="SIGKILL"):
            for _ in range(5):  # batches already queued may still arrive first
                next(loader)
        assert time.monotonic() - started < 5


def test_in_process_corrupt_case_names_the_case(tmp_path):
    slab_case(tmp_path, "bad")
    (tmp_path / "bad_seg.npy").write_bytes(b"\x93NUMPY garbage")
    with loader_for(tmp_path, ["bad"], 0) as loader, pytest.raises(PreprocessingError, match="'bad'"):
        next(loader)


# ---------------------------------------------------------------- reseeding persistent workers
def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a["case_ids"] == b["case_ids"]
        assert np.array_equal(a["data"].numpy(), b["data"].numpy())
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a["target"], b["target"]))


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_reseed_gives_the_stream_of_a_fresh_loader(tmp_path, num_workers):
    slab_case(tmp_path)
    corner_blob_case(tmp_path)
    cases = ["slab", "blob"]
    with loader_for(tmp_path, cases, num_workers, seed=11) as fresh:
        expected = take(fresh, 4)
    with loader_for(tmp_path, cases, num_workers, seed=3) as loader:
        before = take(loader, 3)  # partly consumed; with workers, more are queued or in flight
        loader.reseed(11)
        assert_same_batches(take(loader, 4), expected)
        loader.reseed(3)  # back to the first stream, from its start
        assert_same_batches(take(loader, 3), before)
        loader.reseed(3)  # the same seed again restarts the stream, since batches were taken
        assert_same_batches(take(loader, 2), before[:2])
    assert not np.array_equal(before[0]["data"].numpy(), expected[0]["data"].numpy())


def test_reseed_right_after_reseed_and_at_the_stream_start(tmp_path):
    slab_case(tmp_path)
    with loader_for(tmp_path, ["slab"], 2, seed=5) as fresh:
        expected = take(fresh, 3)
    with loader_for(tmp_path, ["slab"], 2, seed=5) as loader:
        time.sleep(0.5)  # let the workers fill their queues: a reseed to the same seed keeps them
        loader.reseed(5)
        for seed in (6, 7, 5):  # generations the workers may never even start
            loader.reseed(seed)
        assert_same_batches(take(loader, 3), expected)


def test_workers_stay_the_same_processes_across_reseeds(tmp_path):
    slab_case(tmp_path)
    with loader_for(tmp_path, ["slab"], 2) as loader:
        pids = [w.pid for w in loader._workers]
        for seed in range(3):
            loader.reseed(seed)
            next(loader)
        assert [w.pid for w in loader._workers] == pids and all(w.is_alive() for w in loader._workers)
    assert not any(w.is_alive() for w in loader._workers)  # close() ended them


def half_cracked_sampler(folder: Path) -> PatchSampler:
    """Two cases; 'cracked' has a damaged label file, so only streams that draw it fail."""
    slab_case(folder)
    slab_case(folder, "cracked")
    (folder / "cracked_seg.npy").write_bytes(b"\x93NUMPY garbage")
    return PatchSampler(folder, ["slab", "cracked"], (8, 16, 16), 2, seed=0)


def first_seed(sampler: PatchSampler, failing: bool, batches: int) -> int:
    """The first seed whose in-process stream (= the stream of one worker) fails within `batches`
    batches, or (failing=False) does not."""
    for seed in range(100):
        try:
            take(make_loader(sampler, None, seed=seed), batches)
        except PreprocessingError:
            if failing:
                return seed
        else:
            if not failing:
                return seed
    raise AssertionError("no such seed")


def test_errors_of_an_abandoned_stream_are_dropped(tmp_path):
    sampler = half_cracked_sampler(tmp_path)
    bad, good = first_seed(sampler, failing=True, batches=1), first_seed(sampler, failing=False, batches=3)
    with make_loader(sampler, None, num_workers=1, seed=bad, start_method="fork", num_cached=1) as loader:
        time.sleep(0.5)  # the worker has failed and queued its error by now
        loader.reseed(good)
        assert_same_batches(take(loader, 3), take(make_loader(sampler, None, seed=good), 3))


def test_error_after_reseed_names_the_case_and_the_loader_stays_failed(tmp_path):
    sampler = half_cracked_sampler(tmp_path)
    good, bad = first_seed(sampler, failing=False, batches=1), first_seed(sampler, failing=True, batches=1)
    with make_loader(sampler, None, num_workers=2, seed=good, start_method="fork") as loader:
        next(loader)
        loader.reseed(bad)
        with pytest.raises(PreprocessingError, match="'cracked'"):
            next(loader)
        with pytest.raises(PreprocessingError, match="'cracked'"):  # no hang on the closed workers
            loader.reseed(good)


def test_reseed_after_close_is_refused(tmp_path):
    slab_case(tmp_path)
    loader = loader_for(tmp_path, ["slab"], 0)
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        loader.reseed(1)


def test_spawned_worker_ignores_sigint_from_birth(tmp_path):
    """Ctrl-C reaches the whole process group, also a worker still importing its modules; the
    trainer stops the workers itself, so they must survive it."""
    slab_case(tmp_path)
    with loader_for(tmp_path, ["slab"], 1, start_method="spawn") as loader:
        os.kill(loader._workers[0].pid, signal.SIGINT)  # at once: the worker is still starting up
        assert next(loader)["data"].shape == (2, 1, 8, 16, 16)
        assert loader._workers[0].is_alive()


ORPHANING_PARENT = """
import sys
from autoseg.data import PatchSampler, make_loader
sampler = PatchSampler(sys.argv[1], ["slab"], (8, 16, 16), 2)
loader = make_loader(sampler, None, num_workers=1, start_method="fork", num_cached=1)
next(loader)
print(loader._workers[0].pid, flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_worker_exits_when_its_parent_is_killed(tmp_path):
    import subprocess
    import sys

    slab_case(tmp_path)
    parent = subprocess.Popen([sys.executable, "-c", ORPHANING_PARENT, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no atexit handler stops the worker
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while process_running(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphan_survived = process_running(worker_pid)
    if orphan_survived:
        os.kill(worker_pid, signal.SIGKILL)  # leave no stray process behind a failing test
    assert not orphan_survived, "the orphaned worker kept running"


def process_running(pid: int) -> bool:
    """True for a live process; False once it is gone or a zombie (exited, not yet reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
