"""Can rules applied after prediction give vertebrae their right level? Measured, not assumed.

    .venv/bin/python benchmarks/level_relabel.py --predictions DIR [--predictions DIR2 ...] \
        --labels RAW_DATASET/labelsTr [--work /tmp/level_relabel]

`benchmarks/level_errors.py` shows that a budget-trained model of Dataset601 finds the vertebrae
but gives a sixth of the lumbar ones a neighbour's level. This applies four rule sets to a
folder of 2D predictions (levels L1..L5, head at the top of the image) and scores each with
`autoseg evaluate --only-predicted`, beside the unchanged predictions:

- `order`: the level check of the lumbar-ct task (autoseg/tasks/levels.py), image rows taken
  as head to foot: pieces under a fifth of the median level's largest piece go to the level they
  touch; the rest, sorted head to foot, must read as consecutive levels; if they do not, they are
  renumbered with the run of consecutive levels that keeps the most predicted labels, when
  exactly one does;
- `vote+order`: first every vertebra (connected component of all levels merged) takes its
  majority level, then `order`; wrong where two vertebrae touch and merge into one component;
- `pieces+order`: first only the pieces smaller than 40% of their vertebra's largest piece take
  the vertebra's majority level, then `order`;
- `count`: the levels counted from the sacrum up, whatever the model said: the vertebrae
  (components of every foreground class merged, thoracic included; pieces under a fifth of the
  median one left as they are), sorted head to foot, the lowest five become L5..L1 and every one
  above them thoracic; X-rays with fewer than five stay as predicted.

Prints a markdown table; writes relabelled copies under WORK, never touches the predictions.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import cc3d
import numpy as np

from autoseg import api
from autoseg.io import Geometry, read_label, write_image
from autoseg.tasks.levels import check_levels

THORACIC = 1  # one class for every thoracic vertebra in Dataset601_SpineXrayAP
LEVELS = (2, 3, 4, 5, 6)  # L1..L5 in Dataset601_SpineXrayAP
PIECE_FLOOR = 0.2  # `order`: pieces under this share of the median level's largest piece are fragments
SMALL_PIECE = 0.4  # `pieces`: share of the vertebra's largest piece below which a piece is relabelled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=Path, action="append", required=True, help="a folder of predictions (repeatable)")
    parser.add_argument("--labels", type=Path, required=True, help="reference label folder (labelsTr)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/level_relabel"))
    args = parser.parse_args()
    rules: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
        "as predicted": None, "order": order, "vote+order": lambda labels: order(vote(labels)),
        "pieces+order": lambda labels: order(vote_small_pieces(labels)), "count": count_from_sacrum}
    print("| predictions | rules | mean fg Dice | " + " | ".join(f"L{i}" for i in range(1, 6)) + " |")
    print("|---|---|---|" + "---|" * len(LEVELS))
    for folder in args.predictions:
        for name, rule in rules.items():
            out = args.work / folder.parent.name / name.replace("+", "_").replace(" ", "_")
            _relabel_folder(folder, out, rule)
            summary = api.evaluate(out, args.labels, only_predicted=True)
            dice = [summary.mean_per_class[f"L{i}"]["dice"] for i in range(1, 6)]
            print(f"| {folder} | {name} | {summary.mean_foreground_dice:.3f} | " + " | ".join(f"{d:.3f}" for d in dice) + " |",
                  flush=True)


def _relabel_folder(folder: Path, out: Path, rule: Callable[[np.ndarray], np.ndarray] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.png")):
        labels, geometry = read_label(path)
        labels = np.asarray(labels, dtype=np.uint8)
        write_image(out / path.name, labels if rule is None else rule(labels), geometry)


# a radiograph as a one-slice volume whose image rows run from head to feet (world -z, the axis
# check_levels orders along); a proper rotation, so the check sees the image as it is
ROWS_TO_FEET = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))


def order(labels: np.ndarray) -> np.ndarray:
    """autoseg/tasks/levels.py's check: fragments to the level they touch, then level pieces head to
    foot renumbered as consecutive levels where they are not, if unambiguous."""
    return check_levels(labels[None], ROWS_TO_FEET, LEVELS, fragment_fraction=PIECE_FLOOR).labels[0]


def _pieces(labels: np.ndarray) -> np.ndarray:
    """Connected pieces of each level."""
    return cc3d.connected_components(np.where(np.isin(labels, LEVELS), labels, 0), connectivity=8)


def _vertebrae(labels: np.ndarray) -> np.ndarray:
    """Connected components of all levels merged: a vertebra each, unless neighbours touch."""
    return cc3d.connected_components(np.isin(labels, LEVELS).astype(np.uint8), connectivity=8)


def _majority(labels: np.ndarray, mask: np.ndarray) -> int:
    counts = np.bincount(labels[mask], minlength=max(LEVELS) + 1)
    counts[[v for v in range(len(counts)) if v not in LEVELS]] = 0
    return int(counts.argmax())


def vote(labels: np.ndarray) -> np.ndarray:
    """Every vertebra (component of all levels merged) takes its majority level."""
    vertebrae = _vertebrae(labels)
    out = labels.copy()
    for i in range(1, int(vertebrae.max()) + 1):
        mask = vertebrae == i
        out[mask] = _majority(labels, mask)
    return out


def vote_small_pieces(labels: np.ndarray) -> np.ndarray:
    """Pieces smaller than SMALL_PIECE of their vertebra's largest piece take the vertebra's majority level."""
    vertebrae = _vertebrae(labels)
    ids = _pieces(labels)
    out = labels.copy()
    for i in range(1, int(vertebrae.max()) + 1):
        mask = vertebrae == i
        piece_ids, sizes = np.unique(ids[mask], return_counts=True)
        majority = _majority(labels, mask)
        for piece, size in zip(piece_ids, sizes):
            if size < SMALL_PIECE * sizes.max():
                out[ids == piece] = majority
    return out


def count_from_sacrum(labels: np.ndarray) -> np.ndarray:
    """The lowest five vertebrae (image rows run head to foot) become L5..L1, those above thoracic."""
    vertebrae = cc3d.connected_components((labels > 0).astype(np.uint8), connectivity=8)
    ids, sizes = np.unique(vertebrae[vertebrae > 0], return_counts=True)
    kept = ids[sizes >= PIECE_FLOOR * np.median(sizes)] if len(ids) else ids
    if len(kept) < len(LEVELS):
        return labels
    head_to_foot = sorted(kept, key=lambda i: float(np.nonzero(vertebrae == i)[0].mean()))
    out = labels.copy()
    lumbar = head_to_foot[-len(LEVELS):]
    for i in head_to_foot[:-len(LEVELS)]:
        out[vertebrae == i] = THORACIC
    for level, i in zip(LEVELS, lumbar):
        out[vertebrae == i] = level
    return out


if __name__ == "__main__":
    main()
