"""How much of a multi-level segmentation's per-class Dice is lost to level identification.

    .venv/bin/python benchmarks/level_errors.py --predictions DIR --labels RAW_DATASET/labelsTr \
        [--levels 2 3 4 5 6] [--dataset-json RAW_DATASET/dataset.json]

For ordered structures (vertebrae L1..L5) a model can find every structure yet give it its
neighbour's label. This splits the two: the **binary foreground Dice** (all foreground classes
merged: what the model finds), the confusion between classes (share of each reference class's
pixels predicted as each class), and per reference structure of the given LEVELS the majority
foreground label predicted on it; a structure whose majority label is another level counts as
**misidentified**, and the per-case pattern of offsets (predicted minus reference level, `x` where
nothing was predicted) shows whole-column shifts. Prints markdown; reads the predictions only.
"""
from __future__ import annotations

import argparse
from collections import Counter
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True, help="reference label folder (labelsTr)")
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="ordered class values [L1..L5 of Dataset601]")
    parser.add_argument("--dataset-json", type=Path, help="for class names [LABELS/../dataset.json]")
    args = parser.parse_args()
    names = _class_names(args.dataset_json or args.labels.parent / "dataset.json")
    pairs = list(named_pairs(args.predictions, args.labels).values())
    print(report(pairs, args.levels, names))


def _class_names(dataset_json: Path) -> dict[int, str]:
    labels = json.loads(dataset_json.read_text())["labels"]
    return {int(value): name for name, value in labels.items()}


def named_pairs(predictions: Path, labels: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """File name -> (prediction, reference) label arrays, for every prediction in the folder."""
    pairs = {}
    for prediction in sorted(p for p in predictions.iterdir() if p.name != "summary.json" and p.suffix != ".csv"):
        reference = labels / prediction.name
        if not reference.is_file():
            raise SystemExit(f"{prediction}: no reference label {reference}")
        pairs[prediction.name] = (sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(reference))))
    if not pairs:
        raise SystemExit(f"{predictions}: no predictions")
    return pairs


def report(pairs: list[tuple[np.ndarray, np.ndarray]], levels: list[int], names: dict[int, str]) -> str:
    classes = sorted(names)
    confusion = np.zeros((len(classes), len(classes)))
    binary_dice, patterns, structures, misidentified = [], Counter(), 0, 0
    for prediction, reference in pairs:
        found, truth = prediction > 0, reference > 0
        binary_dice.append(2 * (found & truth).sum() / max(found.sum() + truth.sum(), 1))
        confusion += np.bincount(reference.ravel() * len(classes) + prediction.ravel(),
                                 minlength=len(classes) ** 2).reshape(len(classes), len(classes))
        offsets = [_majority_offset(prediction, reference, level, levels) for level in levels if (reference == level).any()]
        structures += len(offsets)
        misidentified += sum(offset not in (0, "x") for offset in offsets)
        if any(offset != 0 for offset in offsets):
            patterns[tuple(offsets)] += 1
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    lines = [f"{len(pairs)} cases. Binary foreground Dice (all classes merged): **{np.mean(binary_dice):.3f}**. "
             f"Structures of levels {levels} whose majority predicted label is another class: "
             f"**{misidentified} of {structures}** ({misidentified / max(structures, 1):.0%}).", "",
             "Share of each reference class's pixels predicted as each class (rows: reference):", "",
             "| reference | " + " | ".join(names[c] for c in classes) + " |", "|---|" + "---|" * len(classes)]
    lines += [f"| {names[c]} | " + " | ".join(f"{shares[i, j]:.3f}" for j in range(len(classes))) + " |"
              for i, c in enumerate(classes)]
    lines += ["", "Cases with an offset (predicted minus reference level per structure, x: nothing predicted):", ""]
    lines += [f"- ({', '.join(map(str, pattern))}): {count} case(s)" for pattern, count in patterns.most_common()]
    return "\n".join(lines)


def _majority_offset(prediction: np.ndarray, reference: np.ndarray, level: int, levels: list[int]) -> int | str:
    """Offset, in levels, of the majority foreground label on the reference structure (`x`: no foreground).
    A label outside LEVELS (a thoracic vertebra above L1) counts by its distance from the first level."""
    votes = np.bincount(prediction[reference == level], minlength=max(levels) + 1)
    votes[0] = 0
    if votes.sum() == 0:
        return "x"
    predicted = int(votes.argmax())
    position = levels.index(predicted) if predicted in levels else -1
    return position - levels.index(level)


if __name__ == "__main__":
    main()
