"""`python -m train`: train VoxelMorph on a dataset, or on the built-in synthetic default.

Options follow the official VoxelMorph scripts' names where they overlap. Everything is
argument parsing; the work is `vxmtf.training.train`.

Unless the environment already says otherwise, this entry point turns on TensorFlow's oneDNN
CPU kernels (`TF_ENABLE_ONEDNN_OPTS=1`; see `vxmtf_cli`). Set `TF_ENABLE_ONEDNN_OPTS=0` to opt
out.
"""

from __future__ import annotations

import argparse

import vxmtf_cli as cli


def build_parser() -> argparse.ArgumentParser:
    from vxmtf.data.synthetic import DEFORMATION_FRACTION, SMOOTHNESS_FRACTION
    from vxmtf.training.config import (
        COSINE_FINAL_FRACTION,
        FILE_DEFAULTS,
        LR_SCHEDULES,
        SYNTHETIC_DEFAULTS,
        DataConfig,
        ModelConfig,
        TrainConfig,
    )

    d, m, t = DataConfig(), ModelConfig(), TrainConfig()
    syn, files = SYNTHETIC_DEFAULTS, FILE_DEFAULTS

    def by_data(name):  # "X on the built-in synthetic data, Y with --data"
        return f"{syn[name]:g} on the built-in synthetic data, {files[name]:g} with --data"

    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a VoxelMorph registration model (unsupervised; optionally "
        "semi-supervised with label maps).",
        formatter_class=cli.HelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="dataset JSON (Learn2Reg style) or folder/glob of images; "
        "omit for the built-in synthetic data",
    )
    g.add_argument(
        "--labels", help="folder of label maps matched to images by file name; needs --data"
    )
    g.add_argument(
        "--atlas",
        help="atlas image (fixed image of every pair with --mode atlas); needs --data",
    )
    g.add_argument(
        "--mode",
        choices=("atlas", "pairs"),
        default=None,
        help="scan-to-atlas or scan-to-scan (random pairs) training (default: atlas on the "
        "built-in synthetic data, pairs with --data)",
    )
    g.add_argument(
        "--synthetic-shape",
        type=int,
        nargs="+",
        default=list(d.synthetic_shape),
        metavar="N",
        help="D H W (or H W for 2D) of the synthetic data",
    )
    g.add_argument(
        "--synthetic-deformation",
        type=cli.non_negative_float,
        default=None,
        metavar="VOXELS",
        help="standard deviation of the synthetic displacement between moving and fixed "
        f"(default: {DEFORMATION_FRACTION:g} x the smallest size)",
    )
    g.add_argument(
        "--synthetic-smoothness",
        type=cli.positive_float,
        default=None,
        metavar="VOXELS",
        help="correlation length of the synthetic displacements (default: "
        f"{SMOOTHNESS_FRACTION:g} x the smallest size)",
    )
    g.add_argument(
        "--downsample",
        type=int,
        default=d.downsample,
        help="integer downsampling factor of the volumes",
    )
    g.add_argument(
        "--normalize",
        choices=("minmax", "percentile"),
        default=d.normalize,
        help="intensity normalisation to [0, 1]",
    )
    g.add_argument("--cache", action="store_true", help="cache preprocessed volumes in memory")
    g = p.add_argument_group("model")
    g.add_argument(
        "--enc",
        type=int,
        nargs="+",
        default=list(m.enc_features),
        metavar="F",
        help="encoder features per level",
    )
    g.add_argument(
        "--dec",
        type=int,
        nargs="+",
        default=list(m.dec_features),
        metavar="F",
        help="decoder features",
    )
    g.add_argument(
        "--int-steps",
        type=int,
        default=m.int_steps,
        help="scaling-and-squaring steps; 0 = the non-diffeomorphic CVPR 2018 model",
    )
    g.add_argument(
        "--int-downsize",
        "--int-resolution",
        dest="int_resolution",
        type=int,
        default=m.int_resolution,
        help="velocity field resolution factor",
    )
    g.add_argument("--bidir", action="store_true", help="bidirectional (symmetric) image loss")
    g = p.add_argument_group("training")
    g.add_argument(
        "--image-loss",
        choices=("ncc", "mse"),
        default=t.image_loss,
        help="similarity of moved and fixed images: local normalised cross-correlation or mean "
        "squared error",
    )
    g.add_argument(
        "--lambda",
        dest="reg_weight",
        type=cli.non_negative_float,
        default=None,
        help="smoothness weight (default: with --data the papers', "
        + ", ".join(f"{k} {v:g}" for k, v in files["reg_weight"].items())
        + "; on the built-in synthetic data "
        + ", ".join(f"{k} {v:g}" for k, v in syn["reg_weight"].items())
        + ")",
    )
    g.add_argument(
        "--seg-weight",
        type=cli.non_negative_float,
        default=t.seg_weight,
        help="weight of the soft Dice on warped label maps (semi-supervised; needs labels)",
    )
    g.add_argument(
        "--epochs", type=int, default=t.epochs, help="epochs to train (in all, with --resume)"
    )
    g.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help=f"(default: {by_data('steps_per_epoch')})",
    )
    g.add_argument("--batch-size", type=int, default=t.batch_size, help="per replica")
    g.add_argument(
        "--lr",
        type=cli.positive_float,
        default=None,
        help=f"Adam learning rate, finite and > 0 (default: {by_data('lr')})",
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help=f"constant, or cosine: a half cosine from --lr down to --lr x "
        f"{COSINE_FINAL_FRACTION:g} at the run's last step (epochs x steps per epoch) (default: "
        f"{syn['lr_schedule']} on the built-in synthetic data, {files['lr_schedule']} with --data)",
    )
    g.add_argument(
        "--warmup-steps",
        type=cli.non_negative_int,
        default=t.warmup_steps,
        help="raise the learning rate linearly from 0 to --lr over the first N steps, then "
        "follow --lr-schedule over the rest (default: 0, none)",
    )
    g.add_argument(
        "--seed", type=int, default=t.seed, help="seed of pair sampling and initial weights"
    )
    g.add_argument("--model-dir", default=t.model_dir, help="output folder")
    g.add_argument(
        "--save-every",
        type=cli.non_negative_int,
        default=t.save_every,
        help="also save the resumable state every N steps (0: each epoch)",
    )
    g.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 (GPU) / bfloat16 (CPU) compute with float32 fields",
    )
    g.add_argument("--xla", action="store_true", help="compile the training step with XLA")
    g.add_argument(
        "--recompute",
        action="store_true",
        help="recompute the U-Net's activations in the backward pass: lower peak memory at "
        "about 1.2-1.4x the step time (same weights; results equal up to float rounding)",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --model-dir")
    g.add_argument(
        "--init-weights",
        metavar="MODEL",
        default=None,
        help="start from the weights of a trained .keras model of the same architecture "
        "(fine-tuning, e.g. pretrained/vxm_lpba40.keras); int_steps may differ",
    )
    g.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="skip the SavedModel export at the end",
    )
    cli.add_verbose_argument(p)
    return p


def config_from_args(args):
    """The `RunConfig` of parsed arguments.

    Raises:
        ValueError: a bad value, or `--atlas` / `--labels` without `--data` (the synthetic
            data make their own pairs and labels and would ignore them).
    """
    from vxmtf.training.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    if args.data is None:
        given = [name for name in ("atlas", "labels") if getattr(args, name) is not None]
        if given:
            options = " and ".join(f"--{name}" for name in given)
            received = ", ".join(f"--{name}={getattr(args, name)}" for name in given)
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(
                f"{options} {verb} to the images of --data; without --data the run trains on "
                f"the built-in synthetic data, which would ignore them. Expected --data with "
                f"{options}. Received: {received} and no --data"
            )
    return RunConfig(
        data=DataConfig(
            data=args.data,
            labels=args.labels,
            atlas=args.atlas,
            mode=args.mode,
            synthetic_shape=tuple(args.synthetic_shape),
            synthetic_deformation=args.synthetic_deformation,
            synthetic_smoothness=args.synthetic_smoothness,
            downsample=args.downsample,
            normalize=args.normalize,
            cache=args.cache,
        ),
        model=ModelConfig(
            enc_features=tuple(args.enc),
            dec_features=tuple(args.dec),
            int_steps=args.int_steps,
            int_resolution=args.int_resolution,
            bidir=args.bidir,
        ),
        train=TrainConfig(
            model_dir=args.model_dir,
            image_loss=args.image_loss,
            reg_weight=args.reg_weight,
            seg_weight=args.seg_weight,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps,
            seed=args.seed,
            mixed_precision=args.mixed_precision,
            xla=args.xla,
            recompute=args.recompute,
            resume=args.resume,
            save_every=args.save_every,
            export=args.export,
            init_weights=args.init_weights,
        ),
    )


def main(argv=None) -> int:
    """Parses the arguments and trains; returns 0, or 2 on bad input (also: the model folder
    is unwritable or another training holds it, or the loss became non-finite)."""
    cli.start(argv)  # environment and a quiet TensorFlow import (when run as a program)
    parser = build_parser()
    args, code = cli.parse_args(parser, argv)
    if args is None:
        return code
    cli.setup_logging(args.verbose)
    try:
        config = config_from_args(args)
    except ValueError as error:
        return cli.report_error(error)
    from vxmtf.training import train
    from vxmtf.training.checkpoint import NonFiniteError

    try:
        result = train(config)
    except cli.BAD_INPUT as error:
        if isinstance(error, NonFiniteError):
            print(flush=True)  # end the progress bar's line
        return cli.report_error(error)
    last = result.model_dir / "last.keras"
    best = f" (best: {result.best_path})" if result.best_path is not None else ""
    if last.is_file():
        print(f"Trained model: {last}{best}")
    if result.export_path is not None:
        print(f"SavedModel for TF Serving: {result.export_path}")
    print(f"Wall time: {result.seconds:.0f} s")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_main("train", main)
