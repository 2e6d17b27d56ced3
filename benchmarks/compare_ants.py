"""ANTs SyN on a dataset's validation pairs, scored exactly as `python -m evaluate.dice` scores
a VoxelMorph model, and a side-by-side table and box plot of the methods.

    pip install antspyx   # optional benchmark dependency, not a dependency of vxmtf
    python -m benchmarks.compare_ants --data ../shared/data/LPBA40/LPBA40_dataset.json \\
        --downsample 2 --out benchmarks/results/ants \\
        --method "VoxelMorph (plain)=runs/eval_plain" --method "VoxelMorph (diff)=runs/eval_diff"

`AntsRegistrator` has the interface of `vxmtf.registration.Registrator` (`register`,
`warp_labels`), so `vxmtf.evaluation.evaluate` computes everything the same way for both: Dice
per structure on the label maps' own (full-resolution) grid with nearest-neighbour warping,
folding fraction and SDlogJ of the full-resolution displacement, and wall time per pair
(first pair excluded). Only the registration differs:

- the pair is block-mean downsampled by `--downsample` (the resolution the VoxelMorph model
  was trained at), as ANTs images with spacing `K` mm and origin `(K - 1) / 2` mm, so that
  coarse voxel `i` sits at fine coordinate `K i + (K - 1) / 2`, as in `vxmtf.data.preprocess`;
- `ants.registration(type_of_transform="SyNOnly")`: SyN alone, since the images are already
  affinely aligned, as VoxelMorph's inputs are; metric CC (the similarity of VoxelMorph's ANTs
  baseline, Balakrishnan et al., IEEE TMI 2019) with radius `--cc-radius`, and
  `--iterations` per level, coarse to fine;
- the resulting warp is composed onto the full-resolution fixed grid (spacing 1 mm, origin 0,
  identity direction), where its vectors in mm are displacements in voxels along the array
  axes: ANTs maps fixed point `p` to moving point `p + d(p)`, VoxelMorph's
  `moved[x] = moving[x + u(x)]`.

The time per pair counts the ANTs registration only (not the composition and warping, which
`evaluate.dice` counts for VoxelMorph): a bound in ANTs's favour.

Each pair's results are kept in `--out`/pairs/ as soon as the pair is done, so a stopped run
continues where it stopped. `--threads` defaults to 2 (what vxmtf uses on the machines here);
`--transform SyN` runs antspyx's default SyN (its own affine stage and metric) instead of SyNOnly
with CC. Writes in `--out`: `dice.csv` and `summary.json` for ANTs (the names and columns of
`evaluate.dice`), and with `--method NAME=DIR` (an `evaluate.dice` output folder; repeatable)
`comparison.md` (one row per method: Dice mean ± std, folding, SDlogJ, seconds per pair) and
`comparison_boxplot.png` (Dice per structure: before registration, then each method).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_ITERATIONS = (100, 70, 50)
TRANSFORMS = ("SyNOnly", "SyN")


def evaluate_resumably(registrator, pairs, folder):
    """`vxmtf.evaluation.evaluate`, one pair at a time, each pair's results kept in
    `<folder>/pairs/<index>.json` as soon as it is done: a run that is stopped continues with
    the pairs it has not done. Returns the `Evaluation` of every pair."""
    import json

    from tqdm.auto import tqdm

    from vxmtf import evaluation
    from vxmtf.atomic import atomic_write_text

    done = Path(folder) / "pairs"
    records, per_pair, names = [], [], {}
    for index, source in enumerate(tqdm(pairs, desc="ANTs pairs", unit="pair")):
        path = done / f"{index:04d}.json"
        if path.is_file():
            part = json.loads(path.read_text())
        else:
            result = evaluation.evaluate(registrator, [source], progress=False)
            part = {"records": result.records, "pairs": result.pairs}
            atomic_write_text(path, json.dumps(part))
        for record in part["records"]:
            records.append({**record, "pair": index})
        per_pair.append({**part["pairs"][0], "pair": index})
        names.update(source.label_names or {})
    return evaluation.Evaluation(records, per_pair, None, names or None)


class AntsRegistrator:
    """Registers a pair with ANTs SyN; the interface of `vxmtf.registration.Registrator`.

    Args:
        downsample: integer factor of the resolution ANTs registers at (1: full resolution).
        cc_radius: radius of ANTs's CC metric window, in (downsampled) voxels.
        iterations: SyN iterations per level, coarse to fine.
        threads: ITK threads (None: ITK's default, every core).
        transform: "SyNOnly" (SyN alone with CC, for pairs already affinely aligned) or "SyN"
            (antspyx's default: an affine stage, then SyN with its default Mattes metric;
            `cc_radius` then does not apply).
    """

    def __init__(
        self,
        downsample=2,
        cc_radius=2,
        iterations=DEFAULT_ITERATIONS,
        threads=None,
        transform="SyNOnly",
    ):
        try:
            import ants
        except ImportError as error:
            raise ImportError(
                "The ANTs comparison needs antspyx, an optional benchmark dependency: "
                "pip install antspyx"
            ) from error
        from vxmtf.checks import check_int

        check_int("downsample", downsample, minimum=1)
        if transform not in TRANSFORMS:
            raise ValueError(
                f"`transform` must be one of {TRANSFORMS}. Received: transform={transform!r}"
            )
        self.transform = transform
        if threads is not None:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
        self._ants = ants
        self.downsample = downsample
        self.cc_radius = int(cc_radius)
        self.iterations = tuple(int(i) for i in iterations)
        metric = f"CC radius {self.cc_radius}" if transform == "SyNOnly" else "default metric"
        self.model_path = (
            f"ANTs {transform}, {metric}, iterations {self.iterations}, "
            f"at 1/{downsample} resolution, {threads or 'all'} threads"
        )

    def _image(self, array, factor):
        from vxmtf.data.preprocess import downsample_image

        array = np.asarray(array, np.float32)
        if factor > 1:
            array = downsample_image(array, factor)
        offset = (factor - 1) / 2
        return self._ants.from_numpy(
            array, origin=(offset,) * array.ndim, spacing=(float(factor),) * array.ndim
        )

    def register(self, moving, fixed):
        """`Registration` with the displacement in voxels of the full-resolution fixed grid."""
        from vxmtf.registration import Registration

        if np.shape(moving) != np.shape(fixed) or np.ndim(fixed) != 3:
            raise ValueError(
                "Expected a moving and a fixed 3D volume of one shape. "
                f"Received: moving.shape={np.shape(moving)}, fixed.shape={np.shape(fixed)}"
            )
        ants = self._ants
        start = time.perf_counter()
        options = {"reg_iterations": self.iterations}
        if self.transform == "SyNOnly":
            options.update(syn_metric="CC", syn_sampling=self.cc_radius)
        result = ants.registration(
            self._image(fixed, self.downsample),
            self._image(moving, self.downsample),
            type_of_transform=self.transform,
            **options,
        )
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as folder:
            composed = ants.apply_transforms(
                fixed=self._image(fixed, 1),
                moving=self._image(moving, 1),
                transformlist=result["fwdtransforms"],
                compose=os.path.join(folder, "to_fixed_"),
            )
            # (X, Y, Z, 3) in mm = voxels here (spacing 1, identity direction).
            displacement = ants.image_read(composed).numpy().astype(np.float32)
        moved = self.warp(moving, displacement)
        return Registration(displacement=displacement, moved=moved, seconds=seconds)

    @staticmethod
    def warp(image, displacement, interpolation="linear"):
        """`vxmtf.registration.warp_volume`: the same warping as for VoxelMorph."""
        from vxmtf.registration import warp_volume

        return warp_volume(image, displacement, interpolation)

    def warp_labels(self, labels, displacement):
        return self.warp(labels, displacement, "nearest")


def load_method(folder):
    """`(summary, records)` of an `evaluate.dice` output folder
    (`vxmtf.evaluation.read_results`)."""
    from vxmtf.evaluation import read_results

    return read_results(folder)


def comparison_table(methods: dict) -> str:
    """Markdown table, one row per method: `{name: summary}` (the first row is 'before')."""

    def num(value, digits=3):
        return (
            "n/a"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else (f"{value:.{digits}f}")
        )

    first = next(iter(methods.values()))
    lines = [
        "| method | Dice mean ± std | folding (% voxels) | SDlogJ | seconds per pair |",
        "|---|---|---|---|---|",
        f"| affine only (before) | {num(first['dice_before_mean'])} ± "
        f"{num(first['dice_before_std'])} | | | |",
    ]
    for name, s in methods.items():
        folding = s["folding_fraction_mean"]
        lines.append(
            f"| {name} | {num(s['dice_after_mean'])} ± {num(s['dice_after_std'])} | "
            f"{num(None if folding is None else 100 * folding, 4)} | {num(s['sdlogj_mean'])} | "
            f"{num(s['seconds_per_pair'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_ants",
        description="Register a dataset's validation pairs with ANTs SyN, score them as "
        "evaluate.dice does, and compare with evaluate.dice output folders.",
    )
    p.add_argument("--data", required=True, help="dataset JSON with registration_val pairs")
    p.add_argument("--downsample", type=int, default=2, help="resolution factor for ANTs")
    p.add_argument("--cc-radius", type=int, default=2, help="CC window radius (voxels)")
    p.add_argument(
        "--iterations", type=int, nargs="+", default=list(DEFAULT_ITERATIONS), metavar="N"
    )
    p.add_argument(
        "--threads", type=int, default=2, help="ITK threads (as many as vxmtf uses here)"
    )
    p.add_argument(
        "--transform",
        choices=TRANSFORMS,
        default="SyNOnly",
        help="SyNOnly with CC (aligned pairs), or antspyx's default SyN (affine + SyN)",
    )
    p.add_argument("--max-pairs", type=int, help="only the first N pairs")
    p.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an evaluate.dice output folder to compare with (repeatable)",
    )
    p.add_argument("--skip-ants", action="store_true", help="reuse --out's ANTs results")
    p.add_argument("--out", default="benchmarks/results/ants", help="output folder")
    return p


def main(argv=None) -> int:
    import vxmtf_cli

    vxmtf_cli.start([])  # environment and a quiet TensorFlow import, when run as a program
    args = build_parser().parse_args(argv)
    methods = {}
    for item in args.method:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            print(f"error: --method expects NAME=DIR. Received: {item!r}", file=sys.stderr)
            return 2
        methods[name] = folder
    from vxmtf import evaluation
    from vxmtf.atomic import atomic_write_text
    from vxmtf.data.dataset import load_dataset

    out = Path(args.out)
    try:
        dataset = load_dataset(args.data)
        if not args.skip_ants:
            registrator = AntsRegistrator(
                args.downsample, args.cc_radius, args.iterations, args.threads, args.transform
            )
            pairs = evaluation.dataset_pairs(dataset)[: args.max_pairs]
            result = evaluate_resumably(registrator, pairs, out)
            summary = evaluation.write_results(
                result, out, model=registrator.model_path, data=args.data
            )
            print(evaluation.format_summary(summary))
        summaries, series = {}, {}
        ants_summary, ants_records = load_method(out)
        loaded = {name: load_method(folder) for name, folder in methods.items()}
        ants_name = (
            "ANTs SyNOnly (CC)" if args.transform == "SyNOnly" else "ANTs SyN (antspyx default)"
        )
        loaded[ants_name] = (ants_summary, ants_records)
        series["before registration"] = [
            {"label": r["label"], "dice": r["dice_before"]} for r in ants_records
        ]
        for name, (summary, records) in loaded.items():
            summaries[name] = summary
            series[name] = [{"label": r["label"], "dice": r["dice_after"]} for r in records]
        table = comparison_table(summaries)
        atomic_write_text(out / "comparison.md", table)
        evaluation.plot_dice_series(series, out / "comparison_boxplot.png", dataset.label_names)
    except (ImportError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {out}/dice.csv, summary.json, comparison.md, comparison_boxplot.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
