"""Do independently trained models agree with each other, against the reference, on a level shift?

    .venv/bin/python benchmarks/level_agreement.py --predictions DIR1 --predictions DIR2 [...] \
        --labels RAW_DATASET/labelsTr [--levels 2 3 4 5 6] [--min-agree 2]

`benchmarks/level_errors.py` shows whole lumbar columns labelled one level off. If that were a
model's slip, models trained apart (other budgets, batch sizes, runs) would slip on different
X-rays; where they give the same X-ray the same shift, the X-ray itself reads differently from its
reference (e.g. a vertebra-shaped body between the reference's L5 and the sacrum: a transitional
vertebra, or levels counted down from the top of the image). Per case and folder this takes the
majority-label offset of each reference level (as level_errors.py does); a folder **shifts** the
case when at least SHIFT_SHARE of the levels share one non-zero offset. Cases that at least
--min-agree folders shift the same way are listed, and each folder's mean foreground Dice is
given over all cases and over the others. The second figure selects cases with the models
themselves, so it is a bound on what the disagreement costs, not a score. Prints markdown.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from autoseg.evaluation import class_metrics
from level_errors import _class_names, _majority_offset, named_pairs

SHIFT_SHARE = 0.8  # of the levels: 4 of L1..L5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=Path, action="append", required=True, help="a model's predictions (repeat)")
    parser.add_argument("--labels", type=Path, required=True, help="reference label folder (labelsTr)")
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="ordered class values [L1..L5 of Dataset601]")
    parser.add_argument("--min-agree", type=int, default=2, help="folders that must shift a case the same way [2]")
    args = parser.parse_args()
    if len(args.predictions) < args.min_agree:
        raise SystemExit(f"--min-agree {args.min_agree} needs at least that many --predictions folders")
    classes = sorted(c for c in _class_names(args.labels.parent / "dataset.json") if c > 0)
    folders = {folder: named_pairs(folder, args.labels) for folder in args.predictions}
    shifts = {folder: {case: column_shift(p, r, args.levels) for case, (p, r) in pairs.items()}
              for folder, pairs in folders.items()}
    agreed = _agreed(shifts, args.min_agree)
    print(report(folders, shifts, agreed, classes, args.min_agree))


def column_shift(prediction: np.ndarray, reference: np.ndarray, levels: list[int]) -> int:
    """The offset most of the column's levels share (0: no whole-column shift)."""
    offsets = [_majority_offset(prediction, reference, level, levels) for level in levels if (reference == level).any()]
    numeric = Counter(o for o in offsets if o != "x")
    if not numeric:
        return 0
    offset, count = numeric.most_common(1)[0]
    return offset if count >= SHIFT_SHARE * len(offsets) else 0


def _agreed(shifts: dict[Path, dict[str, int]], min_agree: int) -> set[str]:
    cases = next(iter(shifts.values()))
    agreed = set()
    for case in cases:
        signs = Counter(int(np.sign(s[case])) for s in shifts.values() if s.get(case, 0) != 0)
        if signs and signs.most_common(1)[0][1] >= min_agree:
            agreed.add(case)
    return agreed


def mean_foreground_dice(pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[int]) -> float:
    """As `autoseg evaluate` reports it: the mean over classes of each class's mean Dice over cases."""
    dice = [[class_metrics(prediction == c, reference == c, (1.0,) * reference.ndim)["dice"] for c in classes]
            for prediction, reference in pairs]
    return float(np.mean(np.nanmean(dice, axis=0))) if dice else float("nan")


def report(folders, shifts, agreed: set[str], classes: list[int], min_agree: int) -> str:
    names = list(folders)
    lines = [f"Cases that at least {min_agree} folders shift the same way: **{len(agreed)}**", "",
             "| case | " + " | ".join(f"shift in {i + 1}" for i in range(len(names))) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {case} | " + " | ".join(str(shifts[f][case]) for f in names) + " |" for case in sorted(agreed)]
    lines += ["", "| folder | predictions | cases | mean fg Dice, all | cases left | mean fg Dice, others |",
              "|---|---|---|---|---|---|"]
    for i, folder in enumerate(names):
        pairs = folders[folder]
        rest = [pair for case, pair in pairs.items() if case not in agreed]
        lines.append(f"| {i + 1} | {folder} | {len(pairs)} | {mean_foreground_dice(list(pairs.values()), classes):.3f} | "
                     f"{len(rest)} | {mean_foreground_dice(rest, classes):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
