"""`python -m vxmtf.register`: register one pair of volume files with a trained model.

    python -m vxmtf.register --model runs/vxm/best.keras --moving a.nii.gz --fixed b.nii.gz \\
        --moved moved.nii.gz --warp warp.nii.gz \\
        [--moving-labels a_seg.nii.gz --moved-labels moved_seg.nii.gz] [--warp-mm warp_mm.nii.gz]

Argument parsing only: the work is `vxmtf.registration.register_files` (grids, conventions and
file layouts are described there).
"""

from __future__ import annotations

import argparse

import vxmtf_cli as cli

DESCRIPTION = """\
Register a moving image onto a fixed one with a trained VoxelMorph model, and write the moved
image, the displacement (and optionally the moved label map and an ITK/ANTs displacement in mm)
on the fixed image's grid, with its affine and header.

--warp holds u in voxels, shape (X, Y, Z, 3), component k along voxel axis k, such that
moved[x] = moving[x + u[x]]. --warp-mm holds the same field for ITK/ANTs: a 5-D NIfTI
(X, Y, Z, 1, 3), intent 1007 (vector), in mm in ITK's LPS physical frame (x and y of the NIfTI
RAS world frame negated).

Images of any size; moving and fixed on different grids (3D, both with affines) are resampled
onto the fixed grid through their affines first (the pair must be affinely aligned already).

--affine: raw scans (other scanners, voxel sizes, fields of view, head positions): an affine
registration in world coordinates comes first, then the deformable model on the affinely
aligned pair; --warp and --warp-mm hold the composed transform (moved[x] = moving[x + u[x]],
the moving image placed by its own affine; antsApplyTransforms -t warp_mm.nii.gz alone
reproduces --moved), --affine-transform the affine alone for ITK/ANTs.

Outputs: an output that is an input (--moving, --fixed, --moving-labels, --model, --config)
or another output, after resolving links, is refused, and so is an output that exists unless
--overwrite is given. All outputs are written or none: each to a temporary file beside it, all
moved into place once every one is written.

--refine-steps N: optimise the network's field further on the pair (the model's own image loss
and lambda; a diffeomorphic model stays diffeomorphic): slower, more accurate.
"""


#: The options that name files written, and files read (which no output may replace).
OUTPUTS = ("moved", "warp", "moved_labels", "warp_mm", "affine_transform")
INPUTS = ("moving", "fixed", "moving_labels", "model", "config")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vxmtf.register",
        description=DESCRIPTION,
        formatter_class=cli.HelpFormatter,
    )
    cli.add_model_arguments(p)
    p.add_argument("--moving", required=True, help="moving image (.nii, .nii.gz, .npz, .npy)")
    p.add_argument("--fixed", required=True, help="fixed image; outputs are on its grid")
    p.add_argument("--moved", required=True, help="output: the moved image (float32)")
    p.add_argument("--warp", required=True, help="output: displacement in voxels (X, Y, Z, 3)")
    p.add_argument("--moving-labels", help="label map of the moving image")
    p.add_argument("--moved-labels", help="output: the moved label map (needs --moving-labels)")
    p.add_argument(
        "--warp-mm", help="output: ITK/ANTs displacement in mm, LPS (.nii/.nii.gz, 3D only)"
    )
    p.add_argument(
        "--affine-transform",
        metavar="PATH",
        help="output: the affine alone as an ITK transform file (.txt/.tfm/.mat; needs --affine)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist (without it, an existing output is an error)",
    )
    cli.add_registration_arguments(p)
    cli.add_verbose_argument(p)
    return p


def main(argv=None) -> int:
    """Parses the arguments and calls `register_files`; returns 0, or 2 on bad input."""
    parser = build_parser()
    args, code = cli.parse_args(parser, argv)
    if args is None:
        return code
    for given, needed in (("moved_labels", "moving_labels"), ("moving_labels", "moved_labels")):
        if getattr(args, given) is not None and getattr(args, needed) is None:
            flags = [f"--{name.replace('_', '-')}" for name in (given, needed)]
            what = "the label map to warp" if needed == "moving_labels" else "where to write it"
            return cli.report_error(f"{flags[0]} needs {flags[1]} ({what})")
    cli.setup_logging(args.verbose)
    from vxmtf.registration import register_files
    from vxmtf.registration.files import check_destinations

    outputs = {name: getattr(args, name) for name in OUTPUTS}
    inputs = {name: getattr(args, name) for name in INPUTS}
    try:
        # First with the options' names in errors; register_files checks again, and writes
        # all outputs or none.
        check_destinations(outputs, inputs, args.overwrite, options=True)
        result = register_files(
            args.model,
            moving=args.moving,
            fixed=args.fixed,
            moved=args.moved,
            warp=args.warp,
            moving_labels=args.moving_labels,
            moved_labels=args.moved_labels,
            warp_mm=args.warp_mm,
            config=args.config,
            affine_transform=args.affine_transform,
            overwrite=args.overwrite,
            **cli.registration_options(args),
        )
    except cli.BAD_INPUT as error:
        return cli.report_error(error)
    print(result.summary())
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_main("vxmtf.register", main)
