"""`python -m evaluate.dice`: Dice per structure before/after registration, folding, SDlogJ, speed.

Argument parsing only; the work is `vxmtf.registration.Registrator` and `vxmtf.evaluation`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DESCRIPTION = """\
Register labelled pairs with a trained model and report, per pair and structure, the Dice overlap
of the label maps before registration (the affinely aligned input) and after (moving labels warped
nearest-neighbour by the predicted displacement, on the label maps' own grid), the fraction of
voxels whose Jacobian determinant is <= 0 (folding), SDlogJ and the time per pair.

Pairs: --pairs CSV, else every scan of --data to --atlas, else the registration_val pairs of
--data; with no --data, the run's own data set when its config.json names one, else held-back
synthetic validation pairs of the run's shape.

Dice excludes label 0 (background). A label absent from both label maps of a pair has no Dice
(0/0): it is written as nan in dice.csv and left out of every mean. Each pair's Dice is the mean
over its labels; the reported mean and std are over pairs. Time per pair excludes the first pair
(warm-up) when there are several.

Writes <out>/dice.csv (pair,moving,fixed,label,dice_before,dice_after), <out>/summary.json and,
with --figures, <out>/dice_boxplot.png and <out>/example_pair.png.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluate.dice",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="runs/vxm/best.keras",
        help="a .keras file, a SavedModel folder (version folder or <base>/<name>: newest "
        "version) or a run folder; default: runs/vxm/best.keras",
    )
    p.add_argument(
        "--config",
        help="the run's config.json (default: found beside the model or above its export)",
    )
    p.add_argument("--data", help="dataset JSON (Learn2Reg style) or folder/glob of images")
    p.add_argument("--label-dir", help="folder of label maps matched to images by file name")
    p.add_argument(
        "--pairs", metavar="CSV", help="CSV of moving,fixed[,moving_labels,fixed_labels]"
    )
    p.add_argument("--atlas", metavar="PATH", help="register every scan of --data to this atlas")
    p.add_argument(
        "--labels", type=int, nargs="+", metavar="L", help="labels to score (default: all present)"
    )
    p.add_argument("--max-pairs", type=int, help="evaluate only the first N pairs")
    p.add_argument(
        "--synthetic-shape",
        type=int,
        nargs="+",
        metavar="N",
        help="shape of the synthetic pairs (default: the run's)",
    )
    p.add_argument("--out", default="runs/eval", help="output folder; default: runs/eval")
    p.add_argument("--figures", action="store_true", help="also save PNG figures (matplotlib)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def main(argv=None) -> int:
    # oneDNN CPU kernels unless the user chose (TensorFlow reads this at import; see README).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from vxmtf import evaluation
    from vxmtf.registration import Registrator

    try:
        if args.figures:
            evaluation.check_figures_available()
        registrator = Registrator(args.model, config=args.config)
        pairs, data = evaluation.select_pairs(
            registrator,
            data=args.data,
            pairs_csv=args.pairs,
            atlas=args.atlas,
            label_dir=args.label_dir,
            max_pairs=args.max_pairs,
            synthetic_shape=args.synthetic_shape,
        )
        result = evaluation.evaluate(registrator, pairs, labels=args.labels, progress=args.progress)
        summary = evaluation.write_results(
            result, args.out, model=registrator.model_path, data=data
        )
        figures = evaluation.save_figures(result, args.out) if args.figures else []
    except (ImportError, OSError, ValueError, TypeError, IndexError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(evaluation.format_summary(summary))
    print(f"wrote {args.out}/dice.csv, {args.out}/summary.json", *figures, sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
