"""Dice overlap per label between two integer label maps (NumPy only).

For label ``k`` with voxel sets ``A_k`` (in ``labels_a``) and ``B_k`` (in ``labels_b``)::

    Dice_k = 2 |A_k ∩ B_k| / (|A_k| + |B_k|)

Reference: L. R. Dice, "Measures of the amount of ecologic association between species",
Ecology 26(3), 1945.
"""

import numpy as np

from vxmtf.checks import is_int

__all__ = ["dice"]

# Above this many bins the joint histogram (max_label + 1) ** 2 would cost too much memory
# (2**24 int64 bins = 128 MiB); labels are then renumbered to 0..n_present-1 first.
_MAX_JOINT_BINS = 2**24


def dice(labels_a, labels_b, labels=None):
    """Dice coefficient of every label between two label maps.

    Both maps are counted in a single pass: the pair of labels at each voxel is encoded as
    ``a * m + b`` (``m = max_label + 1``) and histogrammed with ``np.bincount``. The diagonal of
    the resulting ``(m, m)`` joint histogram is ``|A_k ∩ B_k|``, its row and column sums are
    ``|A_k|`` and ``|B_k|``. This costs the same for 5 labels as for 500, unlike one pair of
    boolean masks per label.

    Args:
        labels_a: integer label map of any shape, e.g. ``(*spatial,)``; 0 is background.
        labels_b: label map of the same shape as ``labels_a``.
        labels: optional iterable of positive integer labels to report, in that order.
            ``None`` reports every label present in either map except 0, in increasing order.
            Background (0) may not be requested: it is never a structure of interest and its
            Dice is dominated by the field of view.

    Returns:
        dict mapping each label (``int``) to its Dice (``float`` in ``[0, 1]``). A label present
        in only one map scores 0.0. A label absent from both maps scores ``nan`` (the overlap is
        undefined, 0/0): leave it out of averages with ``np.nanmean``.

    Accepted dtypes: any integer dtype and bool (as labels 0/1). Floating-point maps (e.g. label
    volumes stored as float in NIfTI) are accepted when every value is finite and integral, and
    are then treated as the integers they hold. Label values must be non-negative.

    Raises:
        ValueError: if the shapes differ, a map holds a negative label, or ``labels`` holds a
            label below 1.
        TypeError: if a map has a non-integer dtype and holds non-integral values (or is not
            numeric at all), or ``labels`` holds a non-integer.
    """
    a = _as_label_array(labels_a, "labels_a")
    b = _as_label_array(labels_b, "labels_b")
    if a.shape != b.shape:
        raise ValueError(
            "Expected `labels_a` and `labels_b` to have the same shape. "
            f"Received: labels_a.shape={a.shape}, labels_b.shape={b.shape}"
        )
    requested = None if labels is None else _check_requested(labels)

    a = a.ravel()
    b = b.ravel()
    if a.size == 0:
        values = np.zeros(0, dtype=np.int64)
    else:
        n_bins = int(max(a.max(), b.max())) + 1
        if n_bins * n_bins <= _MAX_JOINT_BINS:
            values = np.arange(n_bins)
        else:
            # Large label values (e.g. 1e6): renumber the labels present to 0..n-1.
            values, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
            a, b = inverse[: a.size], inverse[a.size :]
    m = values.size

    # joint[i, j] = number of voxels with a == values[i] and b == values[j]; shape (m, m).
    joint = np.bincount(a.astype(np.intp) * m + b, minlength=m * m).reshape(m, m)
    both = np.diagonal(joint)
    size_a = joint.sum(axis=1)
    size_b = joint.sum(axis=0)

    # Map each label value to its row in the histogram.
    row = {int(v): i for i, v in enumerate(values)}
    if requested is None:
        requested = [int(v) for v, i in row.items() if v != 0 and size_a[i] + size_b[i] > 0]

    result = {}
    for label in requested:
        i = row.get(label)
        total = 0 if i is None else int(size_a[i] + size_b[i])
        result[label] = float("nan") if total == 0 else 2.0 * int(both[i]) / total
    return result


def _as_label_array(x, name):
    """Returns `x` as a non-negative integer (or bool) ndarray, checking dtype and values."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        array = x
    elif np.issubdtype(x.dtype, np.floating):
        if not (np.all(np.isfinite(x)) and np.array_equal(x, np.round(x))):
            raise TypeError(
                f"Expected `{name}` to hold integer labels; a float array is accepted only "
                f"when every value is finite and integral. Received: {name}.dtype={x.dtype} "
                "with non-integral values"
            )
        array = x.astype(np.int64)
    else:
        raise TypeError(
            f"Expected `{name}` to be an integer label map. Received: {name}.dtype={x.dtype}"
        )
    if array.size and array.dtype != np.bool_ and array.min() < 0:
        raise ValueError(
            f"Expected `{name}` to hold non-negative labels. Received: min({name})={array.min()}"
        )
    return array


def _check_requested(labels):
    """Returns `labels` as a list of Python ints, each at least 1."""
    result = []
    for label in labels:
        if not is_int(label):
            raise TypeError(
                f"Expected `labels` to hold integers. Received: label={label!r} "
                f"of type {type(label).__name__}"
            )
        if label < 1:
            raise ValueError(
                "Expected `labels` to hold positive labels (0 is background and has no Dice "
                f"here). Received: label={int(label)}"
            )
        result.append(int(label))
    return result
