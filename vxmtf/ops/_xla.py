"""Where a tensor function is being traced: the ops pick their XLA-friendly form from it."""

import tensorflow as tf


def in_xla_context():
    """True while tracing a function that XLA will compile (``jit_compile=True``).

    Some ops have two equivalent forms whose costs swap under XLA (box sums, field resizing,
    scaling and squaring); they ask this while they are traced and choose.
    """
    get_context = getattr(tf.__internal__, "get_enclosing_xla_context", None)
    return get_context is not None and get_context() is not None


def tape_is_recording():
    """True while a `tf.GradientTape` (or forward accumulator) may record the ops being built.

    Inside a traced function this is known at trace time: a tape opened in the function body is
    active while it is traced. A tape around the *call* of a `tf.function` is not: that
    function's gradient is built later from its graph. Reads a TensorFlow internal; if that is
    gone, answers True (the choice that is always correct, if not always the fastest).
    """
    try:
        from tensorflow.python.eager import record
    except ImportError:  # pragma: no cover - depends on the TensorFlow version
        return True
    could_possibly_record = getattr(record, "could_possibly_record", None)
    return True if could_possibly_record is None else bool(could_possibly_record())
