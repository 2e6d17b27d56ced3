"""`train`: one function from a `RunConfig` to a trained, saved and exported model."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from vxmtf.layers.spatial_transformer import SpatialTransformer
from vxmtf.losses import MSE, NCC, Dice, Grad
from vxmtf.networks import VxmDense
from vxmtf.networks.loading import load_vxm_dense
from vxmtf.training.checkpoint import (
    ModelSaver,
    NonFiniteError,
    Position,
    StateCallback,
    StopOnNonFiniteLoss,
    TrainingState,
    check_finite_weights,
    non_finite_weights,
)
from vxmtf.training.config import COSINE_FINAL_FRACTION, RunConfig, TrainConfig
from vxmtf.training.data import TrainingData
from vxmtf.training.images import RegistrationImages
from vxmtf.training.run_folder import RunFolder
from vxmtf.training.strategy import is_chief, make_strategy

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        initial_epoch, initial_batch: where the run started (a resumed run: the epochs it had
            completed, and the steps of the next one it had done).
        best_path: `best.keras`, or None when no epoch was good enough to write it.
    """

    model: VxmDense
    history: dict
    model_dir: Path
    export_path: Path | None
    initial_epoch: int
    seconds: float
    initial_batch: int = 0
    best_path: Path | None = None


def train(config: RunConfig, strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train VoxelMorph as `config` says; save, log and export into `config.train.model_dir`.

    The model folder is laid out as `vxmtf.training.run_folder.RunFolder` describes
    (`config.json`, `last.keras`, `best.keras`, `history.csv`, `logs/`, `state/`,
    `export/vxm/<N>/`). The run claims it first (`RunFolder.claim`: one training at a time),
    then checks everything (the folder, the data, the model, the initial weights, the resumed
    state) before it writes anything: a run that fails its checks leaves the folder as it was.
    A run resumed from a mid-epoch state finishes that epoch with its remaining steps, so a
    killed and resumed run takes as many steps as one that was not killed.

    Raises:
        RunFolderBusyError: another training holds the folder.
        RunFolderError: the folder cannot be created or written.
        FileExistsError: the folder holds an earlier run and `config.train.resume` is false.
        ValueError, FileNotFoundError: bad data, found before training starts.
        NonFiniteError: the loss or the weights became NaN or infinite (training stops at that
            step; what was saved before it is kept, nothing after).
    """
    start = time.perf_counter()
    run = RunFolder(config.train.model_dir)
    strategy = strategy or make_strategy()
    chief = is_chief(strategy)
    # Only the chief writes (the other workers of a cluster may share its folder).
    with run.claim() if chief else contextlib.nullcontext():
        result = _train(config, run, strategy, chief)
    result.seconds = time.perf_counter() - start
    return result


def _train(config: RunConfig, run: RunFolder, strategy, chief: bool) -> TrainResult:
    cfg = config.train
    state = TrainingState(run.state)
    saved = _check_model_dir(run, config, state)
    data = TrainingData(config)  # validates every file before anything is built

    with _precision(cfg.mixed_precision), strategy.scope():
        keras.utils.set_random_seed(cfg.seed)
        built = build_training_model(config, data.shape, data.num_classes)
        model, trainer_model = built.model, built.trainer
        if cfg.init_weights and not (cfg.resume and state.latest() is not None):
            load_initial_weights(model, cfg.init_weights)
        built.compile()
        # States from earlier versions are placed in their epoch by the saved steps per epoch.
        steps_before = (saved or config).train.steps_per_epoch
        start = state.restore(trainer_model, steps_before) if cfg.resume else Position(0, 0, 0)

    initial_epoch, initial_batch = start.epoch, start.batch
    if initial_batch >= cfg.steps_per_epoch:  # resumed with fewer steps per epoch
        logger.warning(
            "The interrupted epoch %d already took %d steps, --steps-per-epoch is %d: "
            "continuing with the next epoch",
            initial_epoch + 1,
            initial_batch,
            cfg.steps_per_epoch,
        )
        initial_epoch, initial_batch = initial_epoch + 1, 0
    replicas = strategy.num_replicas_in_sync
    # (first epoch, end epoch, steps per epoch, steps already done in the first epoch): the
    # rest of an interrupted epoch, then whole epochs. Each part's pipeline is built now, so
    # that the data are checked (enough scans for the mode, ...) before anything is written.
    parts = []
    epoch = initial_epoch
    if initial_batch and epoch < cfg.epochs:
        parts.append((epoch, epoch + 1, cfg.steps_per_epoch - initial_batch, initial_batch))
        epoch += 1
    if epoch < cfg.epochs:
        parts.append((epoch, cfg.epochs, cfg.steps_per_epoch, 0))
    batch_size = cfg.batch_size * replicas
    datasets = [
        data.dataset(batch_size, seed=cfg.seed + 1000 * first + done) for first, _, _, done in parts
    ]
    val_ds = data.validation_dataset(replicas)
    pair = None
    if chief and val_ds is not None:  # the first validation pair, registered each epoch
        pair, _ = next(iter(val_ds.take(1)))
    if chief:
        run.save_config(config)  # the first file written (after the lock)

    monitor = "val_loss" if val_ds is not None else "loss"

    def callbacks(first_epoch, done):
        listed = [
            StopOnNonFiniteLoss(run.state),  # first: raises before any callback saves the step
            StateCallback(state, every=cfg.save_every, writer=chief, start_batch=done),
            ModelSaver(model, run.path, monitor=monitor, writer=chief),
        ]
        if chief:
            listed += [
                keras.callbacks.CSVLogger(str(run.history), append=first_epoch > 0 or done > 0),
                keras.callbacks.TensorBoard(str(run.logs), write_graph=False),
            ]
            if pair is not None:
                listed.append(
                    RegistrationImages(
                        model, pair["moving"][:1], pair["fixed"][:1], run.logs / "images"
                    )
                )
        return listed

    history = {}
    for (first, end, steps, done), train_ds in zip(parts, datasets, strict=True):
        if done:
            logger.info("Finishing epoch %d: its last %d steps", first + 1, steps)
        listed = callbacks(first, done)
        try:
            fit = trainer_model.fit(
                train_ds,
                epochs=end,
                steps_per_epoch=steps,
                initial_epoch=first,
                validation_data=val_ds,
                callbacks=listed,
                verbose="auto",
                shuffle=False,  # the pipeline shuffles, seeded
            )
        except BaseException:  # `fit` ends its callbacks only when it succeeds: close files
            for callback in listed:
                with contextlib.suppress(Exception):
                    callback.on_train_end()
            raise
        for name, values in fit.history.items():
            history.setdefault(name, []).extend(values)
    if not parts:
        logger.info("Nothing to do: %d of %d epochs already done", initial_epoch, cfg.epochs)

    export_path = None
    if cfg.export and chief:
        from vxmtf.export import export_saved_model

        check_finite_weights(model, run.export)
        export_path = export_saved_model(model, run.export, model_name="vxm")
    return TrainResult(
        model,
        history,
        run.path,
        export_path,
        initial_epoch,
        0.0,
        initial_batch=initial_batch,
        best_path=run.best if run.best.is_file() else None,
    )


def load_initial_weights(model: VxmDense, path) -> None:
    """Copies the weights of the trained `VxmDense` saved at `path` into `model` (fine-tuning).

    The two must have the same convolutions (encoder / decoder features, dimensionality); the
    input size, `int_steps` and `int_resolution` may differ, as none of them owns weights (a
    diffeomorphic model may start from a plain one). A resumed run ignores this: its own state
    holds newer weights.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a `.keras` model, or its weights do not fit `model`.
        NonFiniteError: a weight in `path` is NaN or infinite.
        NotVxmDenseError: it holds another model.
    """
    path = Path(path)
    source = load_vxm_dense(path)
    expected = [tuple(w.shape) for w in model.weights]
    received = [tuple(w.shape) for w in source.weights]
    if expected != received:
        raise ValueError(
            f"The initial weights in {path} do not fit this model. Expected shapes "
            f"{expected}. Received: {received} (enc {source.enc_features}, dec "
            f"{source.dec_features}, ndim {len(source.inshape)})"
        )
    bad = non_finite_weights(source)
    if bad:
        raise NonFiniteError(
            f"The initial weights in {path} are not finite: {len(bad)} weight(s) hold NaN or "
            f"Inf (first: {bad[0]}). Expected a trained model with finite weights. "
            f"Received: init_weights={path}"
        )
    model.set_weights(source.get_weights())
    logger.info("Initial weights from %s", path)


def learning_rate(config: TrainConfig):
    """Adam's learning rate for a run, a function of the optimizer step ``t``.

    The number `lr` (`lr_schedule="constant"`), or with `"cosine"` the half cosine
    ``lr * (f + (1 - f) * (1 + cos(pi * min(t, T) / T)) / 2)`` with ``T = epochs *
    steps_per_epoch`` (the run's last step) and ``f = COSINE_FINAL_FRACTION``. With
    ``warmup_steps = W > 0`` the rate first rises linearly, ``lr * t / W`` for ``t < W`` (Goyal
    et al., 2017), and the schedule then runs over the remaining steps: constant at `lr`, or the
    half cosine with ``t - W`` and ``T - W`` in place of ``t`` and ``T``.

    The step is the optimizer's, saved with the resumable state, so a resumed run continues the
    same curve (a resumed run given more `epochs` stretches it: the rate jumps up to where the
    longer curve is at that step).
    """
    warmup = config.warmup_steps
    if config.lr_schedule == "constant" and not warmup:
        return config.lr
    # Keras's CosineDecay has the linear warm-up; with alpha 1 its "decay" keeps `lr`.
    constant = config.lr_schedule == "constant"
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.lr,
        decay_steps=max(1, config.epochs * config.steps_per_epoch - warmup),
        alpha=1.0 if constant else COSINE_FINAL_FRACTION,
        warmup_target=config.lr if warmup else None,
        warmup_steps=warmup,
    )


@dataclass
class TrainingModel:
    """What `build_training_model` builds.

    Attributes:
        model: the registration model, a `VxmDense` (what is saved and exported).
        trainer: the Keras model `fit` trains: `model` with its training outputs (and, with a
            segmentation weight, a `moving_seg` input).
        losses, loss_weights: per output of `trainer`.
        config: the `RunConfig` it was built from.
    """

    model: VxmDense
    trainer: keras.Model
    losses: dict
    loss_weights: dict
    config: RunConfig

    def compile(self) -> keras.Model:
        """Compiles `trainer` with Adam at the run's learning rate or schedule
        (`learning_rate`), and XLA if set."""
        self.trainer.compile(
            optimizer=keras.optimizers.Adam(learning_rate(self.config.train)),
            loss=self.losses,
            loss_weights=self.loss_weights,
            jit_compile=self.config.train.xla,
        )
        return self.trainer


def build_training_model(
    config: RunConfig, shape, num_classes: int = 0, transposed_decoder: bool = True
) -> TrainingModel:
    """The run's `VxmDense` at spatial `shape`, wrapped with its training outputs and losses.

    Image term on `moved` (and `inverse_moved`, each at 1/2, when bidirectional), smoothness
    `lambda * Grad("l2")` on `preint_flow` (multiplied by int_resolution when it is coarser,
    as in the VoxelMorph code), and with a segmentation weight a soft Dice between the fixed
    labels and the moving labels (`num_classes` one-hot channels) warped by the same field
    (TMI 2019, Sec. III-C). Build it under the distribution strategy's scope; not compiled
    (`TrainingModel.compile`). `transposed_decoder` is `VxmDense`'s (False: the explicit
    upsample-concatenate-convolve decoder, the form before it became the default; benchmarks
    compare the two).
    """
    cfg, mcfg = config.train, config.model
    model = VxmDense(
        tuple(shape),
        **mcfg.kwargs(),
        recompute=cfg.recompute,
        transposed_decoder=transposed_decoder,
        name="vxm_dense",
    )
    image_loss = NCC(cfg.ncc_window) if cfg.image_loss == "ncc" else MSE()
    coarse = mcfg.int_steps > 0 and mcfg.int_resolution > 1
    grad = Grad("l2", loss_mult=mcfg.int_resolution if coarse else None)
    moving, fixed = model.inputs
    inputs = {"moving": moving, "fixed": fixed}
    outputs = dict(model([moving, fixed]))
    losses = {"moved": image_loss, "preint_flow": grad}
    weights = {"moved": 1.0, "preint_flow": cfg.reg_weight}
    if mcfg.bidir:
        losses["inverse_moved"] = image_loss
        weights["moved"] = weights["inverse_moved"] = 0.5
    if cfg.seg_weight > 0:
        moving_seg = keras.Input(shape=(*model.inshape, num_classes), name="moving_seg")
        inputs["moving_seg"] = moving_seg
        outputs["moved_seg"] = SpatialTransformer(name="seg_transformer")(
            moving_seg, outputs["displacement"]
        )
        losses["moved_seg"] = Dice()
        weights["moved_seg"] = cfg.seg_weight
    keep = {name: outputs[name] for name in losses}
    trainer = _TrainerModel(inputs=inputs, outputs=keep, name="vxm_trainer")
    return TrainingModel(model, trainer, losses, weights, config)


class _TrainerModel(keras.Model):
    """The functional training wrapper, with two fixes for `MultiWorkerMirroredStrategy`.

    Keras 3's `fit` (TensorFlow backend, as of Keras 3.15) fails on every multi-worker run
    (keras-team/keras#20585):

    1. Before the first step it builds the model from the first distributed batch, collapsed
       with `strategy.reduce("MEAN", batch, axis=None)`, which `MultiWorkerMirroredStrategy`
       cannot do for a nested structure ("Attempt to convert a value ({'moving': PerReplica...
       ... to a Tensor"). Building needs only shapes and dtypes, so this worker's first
       replica's batch serves as well.
    2. It averages each step's logs over replicas with `strategy.reduce("MEAN", v, axis=0)`,
       which fails for the scalar losses ("Invalid reduction dimension 0 for input with 0
       dimensions"). Under that strategy the steps return each log as a 1-element vector, whose
       mean over axis 0 across replicas is the scalar Keras expects.

    Other strategies take Keras's own path unchanged. Never saved: `train` saves the
    registration model inside it.
    """

    def _multi_worker(self):
        return isinstance(self._distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None and self._multi_worker():
            strategy = self._distribute_strategy
            for _, _, batches in iterator:
                # Structure of PerReplica values -> the same structure of this worker's tensors.
                data_batch = tf.nest.map_structure(
                    lambda value: strategy.experimental_local_results(value)[0], next(batches)
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        return self._vector_logs(super().train_step(data))

    def test_step(self, data):
        return self._vector_logs(super().test_step(data))

    def _vector_logs(self, logs):
        if not self._multi_worker():
            return logs
        # Each scalar log -> shape (1,): Keras reduces it with a mean over axis 0 (see above).
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def _check_model_dir(run: RunFolder, config: RunConfig, state: TrainingState):
    """The configuration of the run being resumed (None: a new run, or no config.json)."""
    if not config.train.resume:
        if run.holds_run() or state.latest() is not None:
            raise FileExistsError(
                f"{run.path} holds an earlier run (config.json / state/). Resume it "
                "(train.resume, --resume on the command line), or choose another model folder; "
                "nothing was overwritten."
            )
        return None
    if not run.holds_run():
        return None
    saved = run.load_config()
    if saved.model != config.model:
        raise ValueError(
            f"Resuming needs the architecture of the run in {run.path}. Expected: "
            f"{saved.model}. Received: {config.model}"
        )
    return saved


@contextlib.contextmanager
def _precision(enabled: bool):
    """Mixed precision for the duration of model building: float16 on GPUs, bfloat16 on CPUs
    (TensorFlow's CPU kernels are fast for bfloat16 and lack several float16 ones)."""
    if not enabled:
        yield
        return
    previous = keras.mixed_precision.dtype_policy()
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
