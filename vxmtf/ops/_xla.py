"""Where a tensor function is being traced: the ops pick their XLA-friendly form from it."""

import tensorflow as tf


def in_xla_context():
    """True while tracing a function that XLA will compile (``jit_compile=True``).

    Some ops have two equivalent forms whose costs swap under XLA (box sums, field resizing,
    scaling and squaring); they ask this while they are traced and choose.
    """
    get_context = getattr(tf.__internal__, "get_enclosing_xla_context", None)
    return get_context is not None and get_context() is not None
