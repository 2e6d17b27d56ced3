"""`refine_field`: test-time refinement of a predicted field on one pair (instance optimisation).

Starting from the network's field for one pair, the field itself is optimised further on that
pair, on the model's own training objective (Balakrishnan et al., "VoxelMorph: a learning
framework for deformable medical image registration", IEEE TMI 38(8), 2019, Sec. IV-F,
"instance-specific optimization")::

    L(f) = image_loss(fixed, moving o phi_f) + reg_weight * grad_mult * Grad_l2(f)

with ``image_loss`` the negative local NCC (`vxmtf.losses.mean_local_ncc`) or the MSE, and
``grad_mult`` the ``loss_mult`` of training (``int_resolution`` for a coarse velocity, else 1;
see `vxmtf.training.trainer._training_model`). ``phi_f`` is built from ``f`` as `VxmDense` does:

    int_steps > 0:  u = resize(integrate_velocity(f, int_steps))    (diffeomorphic)
    int_steps == 0: u = resize(f)                                   (displacement)

where ``resize`` is `vxmtf.ops.rescale_field` to the images' grid (the identity when ``f`` is
on it) and ``moved[x] = moving[x + u(x)]``. A velocity stays a velocity, so the refined
transform stays diffeomorphic (up to the accuracy of scaling and squaring).

Optimisation: Adam (Kingma and Ba, ICLR 2015) on the field, written out in a `tf.while_loop`
inside one `tf.function` per level (no Keras optimiser state). A coarse-to-fine schedule runs
`coarse_steps` first on an update ``c`` living on a grid `coarse_factor` times coarser than
``f`` (``f + resize(c)``, so the network's fine detail is kept and only a smooth correction is
searched), then `steps` on ``f`` itself.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import numpy as np
import tensorflow as tf

from vxmtf.checks import check_choice, check_int, check_positive
from vxmtf.losses.grad import grad_penalty
from vxmtf.losses.mse import mean_squared_error
from vxmtf.losses.ncc import mean_local_ncc
from vxmtf.ops.filters import normalize_window
from vxmtf.ops.integrate import integrate_velocity
from vxmtf.ops.resample import warp
from vxmtf.ops.rescale import rescale_field
from vxmtf.training.config import IMAGE_LOSSES

__all__ = [
    "IMAGE_LOSSES",
    "RefineConfig",
    "field_to_displacement",
    "refine_field",
    "refine_objective",
]

#: Adam's moment decay rates and denominator constant (Kingma and Ba; Keras's defaults).
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """How to refine a predicted field on its pair (`refine_field`); the default does nothing.

    Measured on LPBA40 (`benchmarks/bench_refine.py`, 9 validation pairs): from the shipped
    `vxm_lpba40.keras`, ``steps=50, learning_rate=0.3`` raises mean Dice from 0.659 to 0.705
    with no folding (7.6 s per pair on 2 cores); 10 more `full_steps` at full resolution give
    0.711 (12.9 s in all on a 2-core AMX Xeon); the first release's model reached the same
    from 0.646. ``steps=40, full_fine_steps=6, full_reg_weight=0.5`` gives 0.714 in 0.9x that
    time (11.4 s on an idle 2-core AMD EPYC): the recommended setting. ANTs, full resolution:
    0.711 for antspyx's default SyN (304 s), 0.724 for SyNOnly with CC (25-30 min).

    Attributes:
        steps: Adam steps on the field itself (``--refine-steps``); 0 switches refinement off.
        learning_rate: Adam's step size, in voxels of the field's grid per step (Adam's steps
            are about this size whatever the scale of the gradient); 0.3 converged in about 50
            steps on LPBA40, 0.1 needed 200 for less (`benchmarks/results/refine/`).
        coarse_steps: Adam steps first, on a smooth update `coarse_factor` times coarser.
        coarse_factor: integer >= 2, how much coarser that update is.
        fine_steps: Adam steps last, on the field resized to a grid twice as fine (for the
            half-resolution velocity: the model's grid).
        full_steps: steps of a final stage against the full-resolution images, before the
            run's downsampling: not run by `refine_field` on the model grid, but by the caller,
            who holds those images, with a second `refine_field` call on the refined field
            (`full_kwargs`); needs a grid the downsampling covers without padding or remainder.
        full_fine_steps: steps of that full-resolution stage, after its `full_steps`, on the
            field resized to a grid twice as fine (for the shipped models' quarter-resolution
            velocity: half resolution); slower per step, a little more accurate
            (`benchmarks/RESULTS.md`).
        full_reg_weight: lambda of the full-resolution stage alone, >= 0; None: `reg_weight`.
        image_loss: ``"ncc"`` or ``"mse"``; None uses the model's (its run configuration).
        ncc_window: positive odd window of NCC; None uses the model's.
        reg_weight: lambda of the smoothness term, >= 0; None uses the model's.

    Raises:
        ValueError: an attribute of the wrong type or out of range (the message names it as
            the command-line option, ``refine_<name>``).
    """

    steps: int = 0
    learning_rate: float = 0.3
    coarse_steps: int = 0
    coarse_factor: int = 2
    fine_steps: int = 0
    full_steps: int = 0
    full_fine_steps: int = 0
    full_reg_weight: float | None = None
    image_loss: str | None = None
    ncc_window: int | None = None
    reg_weight: float | None = None

    def __post_init__(self):
        for name in ("steps", "coarse_steps", "fine_steps", "full_steps", "full_fine_steps"):
            check_int(f"refine_{name}", getattr(self, name), minimum=0)
        check_int("refine_coarse_factor", self.coarse_factor, minimum=2)
        check_positive("refine_learning_rate", self.learning_rate)
        object.__setattr__(self, "learning_rate", float(self.learning_rate))
        if self.image_loss is not None and self.image_loss not in IMAGE_LOSSES:
            raise ValueError(
                f"`refine_image_loss` must be None or one of {IMAGE_LOSSES}. "
                f"Received: refine_image_loss={self.image_loss!r}"
            )
        if self.ncc_window is not None:
            _check_window(self.ncc_window, "refine_ncc_window")
        for name in ("reg_weight", "full_reg_weight"):
            if getattr(self, name) is not None:
                _check_weight(getattr(self, name), f"refine_{name}")
                object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def enabled(self) -> bool:
        """True when there is at least one step to take."""
        return self.steps + self.coarse_steps + self.fine_steps + self.full_stage_steps > 0

    @property
    def full_stage_steps(self) -> int:
        """Steps of the full-resolution stage: `full_steps` + `full_fine_steps`."""
        return self.full_steps + self.full_fine_steps

    def to_dict(self) -> dict:
        """Plain JSON-ready values (for `summary.json`); `from_dict` reads them back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RefineConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"Unknown refinement options {sorted(unknown)}; expected some of "
                f"{[f.name for f in dataclasses.fields(cls)]}. Received: {values}"
            )
        return cls(**values)

    def kwargs(self, run_config=None) -> dict:
        """Keyword arguments of `refine_field`: this schedule, and the objective.

        The objective is `refine_objective(run_config)` (the model's) with this config's
        overrides applied; without a run config, the VoxelMorph defaults (NCC 9, lambda 1,
        diffeomorphic at half resolution) unless overridden.
        """
        objective = refine_objective(run_config)
        for name in ("image_loss", "ncc_window", "reg_weight"):
            if getattr(self, name) is not None:
                objective[name] = getattr(self, name)
        return {
            **objective,
            "steps": self.steps,
            "learning_rate": self.learning_rate,
            "coarse_steps": self.coarse_steps,
            "coarse_factor": self.coarse_factor,
            "fine_steps": self.fine_steps,
        }

    def full_kwargs(self, run_config=None) -> dict:
        """Keyword arguments of the full-resolution `refine_field` call: `full_steps` on the
        field, then `full_fine_steps` on it resized twice as fine, at `full_reg_weight`."""
        kwargs = {
            **self.kwargs(run_config),
            "steps": self.full_steps,
            "coarse_steps": 0,
            "fine_steps": self.full_fine_steps,
        }
        if self.full_reg_weight is not None:
            kwargs["reg_weight"] = self.full_reg_weight
        return kwargs


def refine_objective(run_config=None) -> dict:
    """The training objective of a run, as keyword arguments of `refine_field`.

    ``int_steps``, ``image_loss``, ``ncc_window``, ``reg_weight`` and ``grad_mult``
    (``int_resolution`` when the velocity is coarser than the images, else 1), read from a
    `vxmtf.training.config.RunConfig`; None gives the defaults of `RunConfig()`.
    """
    if run_config is None:
        from vxmtf.training.config import RunConfig

        run_config = RunConfig()
    model, train = run_config.model, run_config.train
    coarse = model.int_steps > 0 and model.int_resolution > 1
    return {
        "int_steps": int(model.int_steps),
        "image_loss": train.image_loss,
        "ncc_window": int(train.ncc_window),
        "reg_weight": float(train.reg_weight),
        "grad_mult": float(model.int_resolution) if coarse else 1.0,
    }


def refine_field(
    moving,
    fixed,
    field,
    *,
    int_steps,
    image_loss="ncc",
    ncc_window=9,
    reg_weight=1.0,
    grad_mult=1.0,
    steps=100,
    learning_rate=0.1,
    coarse_steps=0,
    coarse_factor=2,
    fine_steps=0,
    jit_compile=False,
):
    """Optimises a registration field on one pair, from the network's prediction.

    Minimises ``L(f) = image_loss(fixed, moving o phi_f) + reg_weight * grad_mult *
    grad_penalty(f, "l2")`` (see the module docstring) with Adam: first `coarse_steps` on an
    update ``c`` on a grid `coarse_factor` times coarser (``f + rescale_field(c)``, ``c``
    starting at 0), then `steps` on ``f``. The field's grid may be coarser than the images'
    by any factor (the network's half-resolution velocity; or, for a refinement at full
    resolution, the same velocity with the full-resolution images).

    Args:
        moving, fixed: ``(1, *spatial, 1)`` float images as the model saw them (normalised,
            downsampled, padded); a batch of pairs is optimised jointly (sum of losses).
        field: ``(batch, *field_spatial, ndim)``, the model's ``preint_flow``: a velocity in
            voxels of its own grid (``int_steps > 0``) or a displacement (``int_steps == 0``);
            every ``field_spatial`` size at least 2.
        int_steps: scaling-and-squaring steps of the model (0: ``field`` is a displacement).
        image_loss: ``"ncc"`` or ``"mse"``.
        ncc_window: positive odd NCC window.
        reg_weight: lambda, >= 0.
        grad_mult: factor on the smoothness term, > 0 (training's ``loss_mult``).
        steps, coarse_steps: Adam steps on the field / on the coarse update, >= 0.
        learning_rate: Adam's step size, > 0.
        coarse_factor: integer >= 2.
        fine_steps: Adam steps last, on the field resized to a grid twice as fine (at most
            the images' grid): more freedom, at the cost of a 2**ndim times larger field (and,
            for a velocity, an integration as much dearer). The returned field is then on
            that finer grid, in its voxels.
        jit_compile: compile each step with XLA: about 1.6-2x faster steps on CPU, but the
            first call for each new shape and objective compiles for 20-70 s (TF 2.21, 2
            cores), so it pays off only over many pairs of one shape.

    Returns:
        ``(field, displacement, history)``: the refined field (shape of ``field``, float32),
        its displacement ``(batch, *spatial, ndim)`` float32 on the images' grid in their
        voxels (``moved[x] = moving[x + displacement[x]]``, as `VxmDense`'s ``displacement``),
        and a dict of NumPy arrays: ``loss``, ``similarity`` (the image loss) and ``smoothness``
        (``grad_penalty(f, "l2")``, so ``loss = similarity + reg_weight * grad_mult *
        smoothness``), each with ``coarse_steps + steps + fine_steps + 1`` values: before every
        step, then after the last.

    Raises:
        ValueError: bad hyperparameters, or shapes that do not fit (see above).
    """
    image_loss, ncc_window = _check_objective(image_loss, ncc_window, reg_weight, grad_mult)
    check_int("int_steps", int_steps, minimum=0)
    check_int("refine_steps", steps, minimum=0)
    check_int("refine_coarse_steps", coarse_steps, minimum=0)
    check_int("refine_coarse_factor", coarse_factor, minimum=2)
    check_int("refine_fine_steps", fine_steps, minimum=0)
    check_positive("refine_learning_rate", learning_rate)
    moving = tf.cast(moving, tf.float32)
    fixed = tf.cast(fixed, tf.float32)
    field = tf.cast(field, tf.float32)
    out_shape = _check_shapes(moving, fixed, field)

    static = (int(int_steps), image_loss, ncc_window)
    weight = tf.constant(float(reg_weight) * float(grad_mult), tf.float32)
    lr = tf.constant(float(learning_rate), tf.float32)
    out_shape = tuple(out_shape)  # static: XLA needs known shapes
    histories = []
    if coarse_steps:
        coarse_shape = [max(2, round(n / coarse_factor)) for n in field.shape[1:-1]]
        update = tf.zeros([field.shape[0], *coarse_shape, field.shape[-1]], tf.float32)
        graphs = _adam_graph(*static, coarse=True, jit_compile=jit_compile)
        _, history, field, displacement = _run_adam(
            graphs, moving, fixed, field, update, out_shape, weight, coarse_steps, lr
        )
        # The next stage's first value is this stage's last: keep it once.
        histories.append(history if not (steps or fine_steps) else history[:-1])
    if steps or not (coarse_steps or fine_steps):  # zero steps only to evaluate the field
        graphs = _adam_graph(*static, coarse=False, jit_compile=jit_compile)
        field, history, _, displacement = _run_adam(
            graphs, moving, fixed, tf.zeros([]), field, out_shape, weight, steps, lr
        )
        histories.append(history if not fine_steps else history[:-1])
    if fine_steps:
        fine_shape = [min(2 * n, m) for n, m in zip(field.shape[1:-1], out_shape, strict=True)]
        field = rescale_field(field, out_shape=fine_shape)
        graphs = _adam_graph(*static, coarse=False, jit_compile=jit_compile)
        field, history, _, displacement = _run_adam(
            graphs, moving, fixed, tf.zeros([]), field, out_shape, weight, fine_steps, lr
        )
        histories.append(history)
    history = np.concatenate(histories, axis=0)  # (evaluations, 3)
    names = ("loss", "similarity", "smoothness")
    return field, displacement, {name: history[:, k] for k, name in enumerate(names)}


def field_to_displacement(field, int_steps, out_shape):
    """``resize(integrate_velocity(field))`` (or ``resize(field)`` for ``int_steps == 0``) on the
    grid ``out_shape``, as `VxmDense` builds its ``displacement`` from ``preint_flow``."""
    displacement = integrate_velocity(field, int_steps) if int_steps else field
    if tuple(displacement.shape[1:-1]) != tuple(int(n) for n in out_shape):
        displacement = rescale_field(displacement, out_shape=out_shape)
    return displacement


@functools.cache
def _adam_graph(int_steps, image_loss, ncc_window, coarse, jit_compile):
    """Two `tf.function`s for one objective: an Adam step and an evaluation of the objective.

    Both take ``(moving, fixed, base, variable, out_shape, weight)``; the field optimised is
    ``variable`` itself, or ``base + rescale_field(variable)`` when `coarse`. Compiled by XLA
    when `jit_compile` (about 2x faster on CPU: the gathers of the warps and their scatter
    gradients fuse).
    """

    def full_field(base, variable):
        if not coarse:
            return variable
        return base + rescale_field(variable, out_shape=tf.shape(base)[1:-1])

    def objective(moving, fixed, base, variable, out_shape, weight):
        field = full_field(base, variable)
        displacement = field_to_displacement(field, int_steps, out_shape)
        moved = warp(moving, displacement)
        if image_loss == "ncc":
            similarity = -mean_local_ncc(fixed, moved, window=ncc_window)
        else:
            similarity = mean_squared_error(fixed, moved)
        smoothness = grad_penalty(field, penalty="l2")
        # Sum over the batch: each pair's field gets its own gradient.
        similarity, smoothness = tf.reduce_sum(similarity), tf.reduce_sum(smoothness)
        loss = similarity + weight * smoothness
        return loss, tf.stack([loss, similarity, smoothness]), field, displacement

    @tf.function(jit_compile=jit_compile, autograph=False)
    def step(moving, fixed, base, variable, out_shape, weight, first, second, t, lr):
        with tf.GradientTape() as tape:
            tape.watch(variable)
            loss, terms, _, _ = objective(moving, fixed, base, variable, out_shape, weight)
        gradient = tape.gradient(loss, variable)
        # Adam, its two bias corrections folded into the step size; t counts from 1.
        first = ADAM_BETA_1 * first + (1.0 - ADAM_BETA_1) * gradient
        second = ADAM_BETA_2 * second + (1.0 - ADAM_BETA_2) * tf.square(gradient)
        size = lr * tf.sqrt(1.0 - ADAM_BETA_2**t) / (1.0 - ADAM_BETA_1**t)
        variable = variable - size * first / (tf.sqrt(second) + ADAM_EPSILON)
        return variable, first, second, terms

    @tf.function(jit_compile=jit_compile, autograph=False)
    def evaluate(moving, fixed, base, variable, out_shape, weight):
        return objective(moving, fixed, base, variable, out_shape, weight)[1:]

    return step, evaluate


def _run_adam(graphs, moving, fixed, base, variable, out_shape, weight, steps, lr):
    """`steps` Adam steps from `variable`; returns it, the history ``(steps + 1, 3)``, and the
    field and displacement it gives."""
    step, evaluate = graphs
    first = second = tf.zeros_like(variable)
    history = []
    for t in range(1, steps + 1):
        variable, first, second, terms = step(
            moving,
            fixed,
            base,
            variable,
            out_shape,
            weight,
            first,
            second,
            tf.constant(t, tf.float32),
            lr,
        )
        history.append(terms)
    terms, field, displacement = evaluate(moving, fixed, base, variable, out_shape, weight)
    history.append(terms)
    return variable, np.stack([h.numpy() for h in history]), field, displacement


def _check_shapes(moving, fixed, field):
    """Returns the images' spatial shape as a list of ints; raises ValueError on a mismatch."""
    if moving.shape.rank not in (4, 5) or moving.shape[-1] != 1:
        raise ValueError(
            "Expected `moving` of shape (batch, *spatial, 1) with 2 or 3 spatial axes. "
            f"Received: moving.shape={moving.shape}"
        )
    if fixed.shape != moving.shape:
        raise ValueError(
            "Expected `moving` and `fixed` of the same shape. "
            f"Received: moving.shape={moving.shape}, fixed.shape={fixed.shape}"
        )
    ndim = moving.shape.rank - 2
    if (
        field.shape.rank != ndim + 2
        or field.shape[-1] != ndim
        or field.shape[0] != moving.shape[0]
        or min(field.shape[1:-1]) < 2
    ):
        raise ValueError(
            f"Expected `field` of shape (batch={moving.shape[0]}, *field_spatial, {ndim}) with "
            f"every field_spatial size at least 2. Received: field.shape={field.shape}, "
            f"moving.shape={moving.shape}"
        )
    if any(s is None for s in moving.shape[1:-1] + field.shape[1:-1]):
        raise ValueError(
            f"Expected known spatial sizes. Received: moving.shape={moving.shape}, "
            f"field.shape={field.shape}"
        )
    return [int(s) for s in moving.shape[1:-1]]


def _check_objective(image_loss, ncc_window, reg_weight, grad_mult):
    check_choice("image_loss", image_loss, IMAGE_LOSSES)
    _check_window(ncc_window, "ncc_window")
    _check_weight(reg_weight, "reg_weight")
    check_positive("grad_mult", grad_mult)
    return image_loss, int(ncc_window)


def _check_weight(value, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")


def _check_window(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be a positive odd int. Received: {name}={value!r}")
    try:
        normalize_window(int(value), None)
    except ValueError:
        raise ValueError(
            f"`{name}` must be a positive odd int. Received: {name}={value!r}"
        ) from None
