"""`python -m evaluate.dice`: Dice per structure before/after registration, folding, SDlogJ, speed.

Argument parsing only; the work is `vxmtf.registration.Registrator` and `vxmtf.evaluation`.
"""

from __future__ import annotations

import argparse

import vxmtf_cli as cli

DESCRIPTION = """\
Register labelled pairs with a trained model and report, per pair and structure, the Dice overlap
of the label maps before registration (the affinely aligned input) and after (moving labels warped
nearest-neighbour by the predicted displacement, on the label maps' own grid), the fraction of
voxels whose Jacobian determinant is <= 0 (folding), SDlogJ and the time per pair.

Pairs: --pairs CSV, else every scan of --data to --atlas, else the registration_val pairs of
--data; with no --data, the run's own data set when its config.json names one, else held-back
synthetic validation pairs of the run's shape. An image with NaN or infinite voxels is refused
(the error names the file and counts them).

Dice excludes label 0 (background). A label absent from both label maps of a pair has no Dice
(0/0): it is written as nan in dice.csv and left out of every mean. Each pair's Dice is the mean
over its labels; the reported mean and std are over pairs. Time per pair excludes the first pair
(warm-up) when there are several.

HD95 is the 95th percentile of the symmetric surface distance between a structure in the two
label maps, in mm (voxel sizes from the fixed image's header): the larger of the two directed
95th percentiles, as MONAI and the Learn2Reg evaluation compute it; inf when the structure is
in one map only (counted, and left out of the means).

Writes <out>/dice.csv (pair,moving,fixed,label,dice_before,dice_after,hd95_before,hd95_after,
structure: one row per pair and label; structure names from the dataset JSON's "labels"),
<out>/summary.json (means, per-label Dice and HD95, folding, SDlogJ, time) and, with --figures,
<out>/dice_boxplot.png (Dice per structure, left and right merged when names are known, sorted
by Dice) and <out>/example_pair.png. --l2r-out DIR writes each displacement in the Learn2Reg
submission format (disp_<fixed>_<moving>.npz: float16, half resolution, channels first).
"""


def _positive_int(text: str) -> int:
    """argparse type of a count >= 1 (argparse names the option in its message)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1. Received: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluate.dice",
        description=DESCRIPTION,
        formatter_class=cli.HelpFormatter,
    )
    cli.add_model_arguments(p, default="runs/vxm/best.keras")
    p.add_argument("--data", help="dataset JSON (Learn2Reg style) or folder/glob of images")
    p.add_argument("--label-dir", help="folder of label maps matched to images by file name")
    p.add_argument(
        "--pairs", metavar="CSV", help="CSV of moving,fixed[,moving_labels,fixed_labels]"
    )
    p.add_argument("--atlas", metavar="PATH", help="register every scan of --data to this atlas")
    p.add_argument(
        "--labels", type=int, nargs="+", metavar="L", help="labels to score (default: all present)"
    )
    p.add_argument(
        "--max-pairs", type=_positive_int, metavar="N", help="evaluate only the first N pairs"
    )
    p.add_argument(
        "--synthetic-shape",
        type=int,
        nargs="+",
        metavar="N",
        help="shape of the synthetic pairs (default: the run's)",
    )
    p.add_argument("--out", default="runs/eval", help="output folder")
    p.add_argument("--figures", action="store_true", help="also save PNG figures (matplotlib)")
    p.add_argument(
        "--l2r-out",
        metavar="DIR",
        help="also write each pair's displacement in the Learn2Reg submission format (3D)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    cli.add_registration_arguments(p)
    cli.add_verbose_argument(p)
    return p


def main(argv=None) -> int:
    """Parses the arguments, evaluates, writes the report; returns 0, or 2 on bad input."""
    cli.start(argv)  # environment and a quiet TensorFlow import (when run as a program)
    args, code = cli.parse_args(build_parser(), argv)
    if args is None:
        return code
    cli.setup_logging(args.verbose)
    from vxmtf import evaluation
    from vxmtf.registration import Registrator

    try:
        if args.figures:
            evaluation.check_figures_available()
        registrator = Registrator(args.model, config=args.config, **cli.registration_options(args))
        pairs, data = evaluation.select_pairs(
            registrator.config,
            data=args.data,
            pairs_csv=args.pairs,
            atlas=args.atlas,
            label_dir=args.label_dir,
            max_pairs=args.max_pairs,
            synthetic_shape=args.synthetic_shape,
            inshape=registrator.inshape,
        )
        result = evaluation.evaluate(
            registrator, pairs, labels=args.labels, progress=args.progress, l2r_out=args.l2r_out
        )
        summary = evaluation.write_results(
            result,
            args.out,
            model=registrator.model_path,
            data=data,
            settings=registrator.settings(),
        )
        figures = evaluation.save_figures(result, args.out) if args.figures else []
    except cli.BAD_INPUT as error:
        return cli.report_error(error)
    print(evaluation.format_summary(summary))
    written = [f"{args.out}/dice.csv", f"{args.out}/summary.json", *map(str, figures)]
    if args.l2r_out:
        written.append(f"{args.l2r_out}/disp_*.npz ({len(pairs)} Learn2Reg displacements)")
    print("wrote", *written, sep="\n  ")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_main("evaluate.dice", main)
