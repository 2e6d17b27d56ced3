"""Losses of `register_affine` on weighted point sets: `values` (points,) of the fixed image,
`sampled` (points,) of the moving image at the mapped points, `weights` (points,) 1 inside the
moving field of view and 0 outside."""

import tensorflow as tf

_NCC_EPSILON = 1e-8
_MI_EPSILON = 1e-10


def ncc_loss(values, sampled, weights, bins):
    """Negative global NCC: -cov(f, m) / sqrt(var(f) var(m)), weighted means over the points."""
    del bins
    total = tf.reduce_sum(weights) + _NCC_EPSILON
    f_mean = tf.reduce_sum(weights * values) / total
    m_mean = tf.reduce_sum(weights * sampled) / total
    f = values - f_mean
    m = sampled - m_mean
    cov = tf.reduce_sum(weights * f * m) / total
    f_var = tf.reduce_sum(weights * f * f) / total
    m_var = tf.reduce_sum(weights * m * m) / total
    return -cov / tf.sqrt(f_var * m_var + _NCC_EPSILON)


def mse_loss(values, sampled, weights, bins):
    """Weighted mean squared difference."""
    del bins
    total = tf.reduce_sum(weights) + _NCC_EPSILON
    return tf.reduce_sum(weights * tf.square(values - sampled)) / total


def mi_loss(values, sampled, weights, bins):
    """Negative mutual information of a Parzen-window joint histogram (Mattes et al. 2003).

    Intensities lie in [0, 1]; bin centres `b_k = (k + 1/2) / bins`; each point adds the
    normalised Gaussian kernels `K(f - b_k) K(m - b_l)` (std one bin) to the joint histogram
    `p(k, l)`, and MI = sum p(k, l) log(p(k, l) / (p(k) p(l))).
    """
    centres = (tf.range(bins, dtype=tf.float32) + 0.5) / bins
    sigma = 1.0 / bins

    def parzen(x):
        x = tf.clip_by_value(x, 0.0, 1.0)
        kernel = tf.exp(-0.5 * tf.square((x[:, None] - centres[None, :]) / sigma))  # (points, bins)
        return kernel / (tf.reduce_sum(kernel, axis=1, keepdims=True) + _MI_EPSILON)

    f_kernel = parzen(values) * weights[:, None]
    m_kernel = parzen(sampled)
    joint = tf.matmul(f_kernel, m_kernel, transpose_a=True)  # (bins, bins)
    joint = joint / (tf.reduce_sum(joint) + _MI_EPSILON)
    p_f = tf.reduce_sum(joint, axis=1, keepdims=True)
    p_m = tf.reduce_sum(joint, axis=0, keepdims=True)
    mi = tf.reduce_sum(
        joint
        * (
            tf.math.log(joint + _MI_EPSILON)
            - tf.math.log(p_f + _MI_EPSILON)
            - tf.math.log(p_m + _MI_EPSILON)
        )
    )
    return -mi


METRIC_FUNCTIONS = {"ncc": ncc_loss, "mse": mse_loss, "mi": mi_loss}
