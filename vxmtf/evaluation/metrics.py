"""Evaluation of a registration method on labelled pairs: Dice per structure, regularity, speed.

For each pair `(moving, fixed)` with label maps, a `vxmtf.registration.Registrator` gives the
displacement `u` on the label maps' own grid (resized from the model's grid, vectors scaled,
when the run was downsampled), and:

- Dice per structure (`vxmtf.metrics.dice`; label 0, the background, excluded) between the fixed
  label map and the moving one before registration (the affinely aligned input) and after
  (moving labels warped by `u`, nearest neighbour). A label absent from both maps of a pair has
  no Dice (0/0): it is NaN in `dice.csv` and left out of every mean.
- folding fraction: share of voxels with `det(I + grad u) <= 0`; SDlogJ: standard deviation of
  `log det(I + grad u)` (clipped into (1e-9, 1e9)), both on that full-resolution `u`
  (Learn2Reg, Hering et al., IEEE TMI 42(3), 2022).
- seconds: wall time of the registration (preprocessing, network, resizing, image warp).

Summary statistics: each pair's Dice is the mean over its labels (NaN left out); the reported
mean and standard deviation (population, ddof=0) are over pairs. `seconds_per_pair` leaves out
the first pair, which includes tracing and warm-up, unless there is only one.

Pairs come as `vxmtf.data.pairs.PairSource`s, loaded one at a time (`select_pairs` chooses
them as `evaluate.dice` does); the registrator is anything with `register(moving, fixed)` and
`warp_labels(labels, displacement)`: a `vxmtf.registration.Registrator`, or the ANTs baseline of
`benchmarks.compare_ants`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from vxmtf.data.learn2reg import save_l2r_displacement
from vxmtf.data.pairs import PairSource
from vxmtf.metrics import dice, folding_fraction, hd95, jacobian_determinant, sdlogj

logger = logging.getLogger(__name__)

__all__ = [
    "Evaluation",
    "count_infinite",
    "evaluate",
    "evaluate_pair",
    "finite_mean",
    "nanmean",
    "nanstd",
]


def nanmean(values) -> float:
    """The mean of the values that are not NaN (NaN if none)."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def finite_mean(values) -> float:
    """The mean of the finite values (NaN and inf left out; NaN if none): for HD95, which is
    inf for a structure present in one map only (counted apart, see `count_infinite`)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def count_infinite(values) -> int:
    return int(np.isinf(np.asarray(values, np.float64)).sum())


def nanstd(values) -> float:
    """The population standard deviation of the values that are not NaN (NaN if none)."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.std()) if values.size else float("nan")


@dataclasses.dataclass
class Evaluation:
    """Results of `evaluate`.

    Attributes:
        records: one dict per (pair, label) with the `CSV_COLUMNS` keys.
        pairs: one dict per pair: `pair`, `moving`, `fixed`, `dice_before`, `dice_after`
            (means over its labels, NaN left out), `hd95_before`, `hd95_after` (means over its
            labels of finite values), `folding_fraction`, `sdlogj`, `seconds`.
        example: middle slices of the first pair for `save_figures` (or None).
        label_names: structure name of each label value (from the dataset), or None.
    """

    records: list[dict]
    pairs: list[dict]
    example: dict | None = None
    label_names: dict | None = None

    def summary(self, model=None, data=None) -> dict:
        """The numbers `summary.json` holds (`vxmtf.evaluation.report.summarize`)."""
        from vxmtf.evaluation.report import summarize

        return summarize(self, model=model, data=data)


def evaluate_pair(registrator, pair: dict, labels=None) -> tuple[dict, dict, dict]:
    """Registers one loaded pair and measures it.

    `pair` holds `moving`, `fixed`, `moving_labels`, `fixed_labels` and optionally `spacing`
    (the label grid's voxel size in mm; 1 mm when absent).

    Returns:
        `(dice_before, dice_after, metrics)`: two `{label: dice}` dicts over the same labels
        (`labels`, or every non-zero label of either map), and `folding_fraction`, `sdlogj`,
        `seconds`, `hd95_before`, `hd95_after` (`{label: mm}`, `vxmtf.metrics.hd95`: inf for
        a label in one map only), plus the arrays `moved`, `moved_labels`, `displacement`.
    """
    moving_labels, fixed_labels = pair["moving_labels"], pair["fixed_labels"]
    if labels is None:
        present = np.union1d(np.unique(moving_labels), np.unique(fixed_labels))
        labels = [int(v) for v in present if v != 0]
    if getattr(registrator, "affine", None) is not None:
        # The affine stage places each image by its affine (identity for arrays without one).
        eye = np.eye(4) if np.ndim(pair["fixed"]) == 3 else np.eye(3)
        affines = [pair.get(f"{k}_affine") for k in ("moving", "fixed")]
        affines = [eye if a is None else a for a in affines]
        result = registrator.register(pair["moving"], pair["fixed"], *affines)
        moved_labels = result.warp_moving(moving_labels, "nearest")
    else:
        result = registrator.register(pair["moving"], pair["fixed"])
        moved_labels = registrator.warp_labels(moving_labels, result.displacement)
    jacdet = jacobian_determinant(result.displacement)
    metrics = {
        "folding_fraction": folding_fraction(jacdet),
        "sdlogj": sdlogj(jacdet),
        "seconds": result.seconds,
        "moved": result.moved,
        "moved_labels": moved_labels,
        "displacement": result.displacement,
    }
    spacing = pair.get("spacing")
    metrics["hd95_before"] = hd95(moving_labels, fixed_labels, labels, spacing=spacing)
    metrics["hd95_after"] = hd95(moved_labels, fixed_labels, labels, spacing=spacing)
    before = dice(moving_labels, fixed_labels, labels)
    after = dice(moved_labels, fixed_labels, labels)
    return before, after, metrics


def evaluate(
    registrator, pairs: Sequence[PairSource], labels=None, progress=True, l2r_out=None
) -> Evaluation:
    """Registers and measures every pair (see the module docstring).

    Args:
        registrator: a `vxmtf.registration.Registrator`.
        pairs: `PairSource`s, loaded one at a time.
        labels: the labels to score; None scores, per pair, every non-zero label of either map.
        progress: show a tqdm progress bar across pairs (on stderr).
        l2r_out: a folder for each pair's displacement in the Learn2Reg submission format
            (`vxmtf.data.learn2reg.save_l2r_displacement`: `disp_<fixed>_<moving>.npz`), or
            None.
    """
    from tqdm.auto import tqdm

    records, per_pair, example, names = [], [], None, {}
    bar = tqdm(pairs, desc="registering pairs", unit="pair", disable=not progress)
    for index, source in enumerate(bar):
        pair = source.load()
        before, after, metrics = evaluate_pair(registrator, pair, labels)
        names.update(source.label_names or {})
        if l2r_out is not None:
            save_l2r_displacement(metrics["displacement"], l2r_out, source.fixed, source.moving)
        for label in before:
            records.append(
                {
                    "pair": index,
                    "moving": source.moving,
                    "fixed": source.fixed,
                    "label": label,
                    "dice_before": before[label],
                    "dice_after": after[label],
                    "hd95_before": metrics["hd95_before"][label],
                    "hd95_after": metrics["hd95_after"][label],
                    "structure": names.get(label, ""),
                }
            )
        per_pair.append(
            {
                "pair": index,
                "moving": source.moving,
                "fixed": source.fixed,
                "dice_before": nanmean(list(before.values())),
                "dice_after": nanmean(list(after.values())),
                "hd95_before": finite_mean(list(metrics["hd95_before"].values())),
                "hd95_after": finite_mean(list(metrics["hd95_after"].values())),
                "folding_fraction": metrics["folding_fraction"],
                "sdlogj": metrics["sdlogj"],
                "seconds": metrics["seconds"],
            }
        )
        logger.info(
            "pair %d: Dice %.3f -> %.3f",
            index,
            per_pair[-1]["dice_before"],
            per_pair[-1]["dice_after"],
        )
        bar.set_postfix(dice=f"{per_pair[-1]['dice_after']:.3f}")
        if example is None:
            example = _middle_slices({**pair, **metrics})
    return Evaluation(records, per_pair, example, names or None)


def _middle_slices(arrays: dict) -> dict:
    """2D views of one pair for the figures: the middle slice along the last axis in 3D."""
    keys = ("moving", "fixed", "moved", "fixed_labels", "moved_labels", "displacement")
    ndim = np.ndim(arrays["fixed"])
    out = {}
    for key in keys:
        array = np.asarray(arrays[key])
        if ndim == 3:
            array = array[:, :, array.shape[2] // 2]
        out[key] = array
    # In-plane components of the displacement: axes 0 and 1.
    out["displacement"] = out["displacement"][..., :2]
    return out
