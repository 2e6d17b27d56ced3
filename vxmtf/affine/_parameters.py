"""The parameterisation of `register_affine`'s transforms: translation, rotation, log scales
and shears, built into a matrix with NumPy (`NumpyOps`) or TensorFlow (`TfOps`) ops."""

import numpy as np
import tensorflow as tf


class ParamSpec:
    """Layout of the parameter vector: translation, rotation, log scales, shears."""

    def __init__(self, ndim, transform):
        self.ndim = ndim
        self.n_rot = 3 if ndim == 3 else 1
        self.n_scale = {"rigid": 0, "similarity": 1, "affine": ndim}[transform]
        self.n_shear = (3 if ndim == 3 else 1) if transform == "affine" else 0
        self.size = ndim + self.n_rot + self.n_scale + self.n_shear

    def scales(self, radius):
        """Physical value of one optimiser unit: 1 mm, or 1 mm at `radius` for the others."""
        scales = np.full(self.size, 1.0 / radius)
        scales[: self.ndim] = 1.0
        return scales

    def split(self, params):
        ndim, i = self.ndim, self.ndim
        t = params[:ndim]
        r = params[i : i + self.n_rot]
        i += self.n_rot
        s = params[i : i + self.n_scale]
        i += self.n_scale
        h = params[i : i + self.n_shear]
        return t, r, s, h

    def linear(self, params, lib):
        """`L = R diag(exp(s)) U` from the parameters, with `lib` = NumPy or TF ops."""
        _, r, s, h = self.split(params)
        rot = rotation(r, self.ndim, lib)
        if self.n_scale:
            scale = lib.exp(s) if self.n_scale == self.ndim else lib.exp(s[0]) * lib.ones(self.ndim)
            rot = rot * scale[None, :]  # R @ diag(scale): scales columns
        if self.n_shear:
            rot = lib.matmul(rot, shear(h, self.ndim, lib))
        return rot

    def matrix(self, params, centre):
        """The homogeneous NumPy matrix of `x -> c + L (x - c) + t`."""
        t = params[: self.ndim]
        lin = self.linear(params, NumpyOps)
        out = np.eye(self.ndim + 1)
        out[: self.ndim, : self.ndim] = lin
        out[: self.ndim, self.ndim] = centre + t - lin @ centre
        return out


class NumpyOps:
    """The few array functions `ParamSpec.linear` needs, as NumPy (the TF ones are `TfOps`)."""

    exp = staticmethod(np.exp)
    sin = staticmethod(np.sin)
    cos = staticmethod(np.cos)
    sqrt = staticmethod(np.sqrt)
    matmul = staticmethod(np.matmul)

    @staticmethod
    def ones(n):
        return np.ones(n)

    @staticmethod
    def stack_matrix(rows):
        return np.array([[np.asarray(v, dtype=np.float64) for v in row] for row in rows])

    @staticmethod
    def sum_squares(v):
        return np.sum(np.square(v))


class TfOps:
    exp = staticmethod(tf.exp)
    sin = staticmethod(tf.sin)
    cos = staticmethod(tf.cos)
    sqrt = staticmethod(tf.sqrt)
    matmul = staticmethod(tf.matmul)

    @staticmethod
    def ones(n):
        return tf.ones([n], tf.float32)

    @staticmethod
    def stack_matrix(rows):
        return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])

    @staticmethod
    def sum_squares(v):
        return tf.reduce_sum(tf.square(v))


def rotation(r, ndim, lib):
    """Rotation matrix: angle `r[0]` in 2D; Rodrigues' formula of rotation vector `r` in 3D.

    R = I + sin(a) / a K + (1 - cos(a)) / a^2 K^2, with a = |r| and K the cross-product matrix
    of r; `a` carries a tiny offset so that the gradient at r = 0 is finite.
    """
    if ndim == 2:
        c, s = lib.cos(r[0]), lib.sin(r[0])
        return lib.stack_matrix([[c, -s], [s, c]])
    angle_sq = lib.sum_squares(r) + 1e-12
    angle = lib.sqrt(angle_sq)
    a = lib.sin(angle) / angle
    b = (1.0 - lib.cos(angle)) / angle_sq
    x, y, z = r[0], r[1], r[2]
    # I + a K + b K^2 written out (K = [[0, -z, y], [z, 0, -x], [-y, x, 0]]).
    return lib.stack_matrix(
        [
            [1.0 - b * (y * y + z * z), -a * z + b * x * y, a * y + b * x * z],
            [a * z + b * x * y, 1.0 - b * (x * x + z * z), -a * x + b * y * z],
            [-a * y + b * x * z, a * x + b * y * z, 1.0 - b * (x * x + y * y)],
        ]
    )


def shear(h, ndim, lib):
    """Unit upper-triangular matrix with the shears above the diagonal (row-major)."""
    if ndim == 2:
        return lib.stack_matrix([[1.0, h[0]], [0.0, 1.0]])
    return lib.stack_matrix([[1.0, h[0], h[1]], [0.0, 1.0, h[2]], [0.0, 0.0, 1.0]])
