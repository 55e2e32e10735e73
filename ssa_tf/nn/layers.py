"""Keras layers that keep their weight in SVD form, W = U diag(s) V^T.

Each layer owns its forward factors (``U``, ``s``, ``V``, trainable), a set of
fixed feedback factors of the same shapes (``B_U``, ``B_s``, ``B_V``), knows
how to merge them back into an ordinary kernel and how to re-factor itself
exactly at a lower rank (``ssa_tf.nn.svd``). The trainer and the rank
callback only call these methods; they never touch the variables directly.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops
import tensorflow as tf

from ssa_tf.nn.precision import conv as error_dtype_conv
from ssa_tf.nn.svd import CONV_FACTORIZATIONS, FORWARD_FORMS, SVDLayer

_PACKAGE = "ssa_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SVDDense(SVDLayer, keras.layers.Layer):
    """Dense layer z = ((x V) * s) U^T + b with W (units x in) = U diag(s) V^T."""

    def __init__(self, units, rank=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", feedback_seed=None, feedback_init="random",
                 init_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self._init_svd(rank, use_bias, kernel_initializer, feedback_seed, feedback_init,
                       bias_initializer, init_scale)
        self._in_dim = None

    @property
    def _out_dim(self):
        return self.units

    @property
    def _matrix_shape(self):
        return (self.units, self._in_dim)

    @property
    def _kernel_shape(self):
        return (self._in_dim, self.units)

    @staticmethod
    def matrix_from_kernel(kernel):
        return np.asarray(kernel).T

    @staticmethod
    def kernel_from_matrix(matrix):
        return np.asarray(matrix).T

    def build(self, input_shape):
        self._in_dim = int(input_shape[-1])
        self._build_factors()

    def matrix_inputs(self, x) -> np.ndarray:
        """The rows the layer's matrix multiplies: ``x`` as (examples, in)."""
        return np.asarray(ops.convert_to_numpy(x)).reshape(-1, self._in_dim)

    def call(self, x):
        self._record_input(x)
        z = ops.matmul(ops.matmul(x, self.V) * self.s, ops.transpose(self.U))
        if self.bias is not None:
            z = z + self.bias
        return z

    def feedback_call(self, x):
        """The linear map of the feedback factors, B = B_U diag(B_s) B_V^T (no bias)."""
        return ops.matmul(ops.matmul(x, self.B_V) * self.B_s, ops.transpose(self.B_U))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, **self._svd_config()}

    @classmethod
    def from_dense(cls, layer: keras.layers.Dense, rank=None, **kwargs):
        """An SVDDense computing what ``layer`` computes (exact at full rank)."""
        if layer.activation not in (None, keras.activations.linear):
            raise ValueError(f"{layer.name}: only linear Dense layers convert; "
                             "put the activation in a separate layer")
        new = cls(layer.units, rank=rank, use_bias=layer.use_bias,
                  name=kwargs.pop("name", layer.name), **kwargs)
        new._initial_kernel = ops.convert_to_numpy(layer.kernel)
        new.build((None, layer.kernel.shape[0]))
        if layer.use_bias:
            new.bias.assign(ops.convert_to_numpy(layer.bias))
        return new


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SVDConv2D(SVDLayer, keras.layers.Layer):
    """2-D convolution in SVD form (docs/ALGORITHM.md §2), channels last.

    ``factorization="spatial"`` (the paper's): the kernel K (kh, kw, C, N) is
    viewed as K'[(n, w), (c, h)] and factored; the layer runs a vertical
    (kh x 1, C -> r) convolution then a horizontal (1 x kw, r -> N)
    convolution, each carrying one axis' stride and padding. Full rank is
    min(N kw, C kh) (3C for a 3x3 kernel with C = N).

    ``factorization="channel"``: K is viewed as K'[n, (h, w, c)], an
    N x (kh kw C) matrix; the factored layer is a (kh x kw, C -> r)
    convolution with the stride and padding, then a 1x1 (r -> N) one. Full
    rank is min(N, kh kw C) (N for a 3x3 kernel), so a full-rank layer has
    about 1.1x, not 2x, the plain convolution's weights, and the factored
    pair does fewer multiply-adds than the plain kernel below about 90% of
    full rank instead of 50%.

    Either way, at full rank it is the original convolution exactly.

    ``forward="auto"`` computes the same function in whichever order costs
    less (``uses_merged_forward``): the two factored convolutions, or one
    convolution with the kernel merged from the factors each step (gradients
    reach U, s and V through the merge, whose own r x rows x columns
    multiply-adds count against the batch). At full rank the spatial pair
    does about twice the plain convolution's multiply-adds (r = 3C for a 3x3
    kernel) and runs 1.5x slower per multiply-add, so on large batches the
    merged form wins until a cut brings the rank below about a third; at
    small batches on small maps (resnet18's last stage at batch 8) the merge
    itself costs more than the pair.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", rank=None, use_bias=True,
                 kernel_initializer="he_normal", bias_initializer="zeros", feedback_seed=None,
                 feedback_init="random", init_scale=1.0, forward="auto",
                 factorization="spatial", **kwargs):
        super().__init__(**kwargs)
        if forward not in FORWARD_FORMS:
            raise ValueError(f"forward must be one of {FORWARD_FORMS}, got {forward!r}")
        if factorization not in CONV_FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {CONV_FACTORIZATIONS}, "
                             f"got {factorization!r}")
        self.forward = forward
        self.factorization = factorization
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.padding = padding.lower()
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self._init_svd(rank, use_bias, kernel_initializer, feedback_seed, feedback_init,
                       bias_initializer, init_scale)
        self._channels = None

    @property
    def _out_dim(self):
        return self.filters

    @property
    def _matrix_shape(self):
        kh, kw = self.kernel_size
        if self.factorization == "channel":
            return (self.filters, kh * kw * self._channels)
        return (self.filters * kw, self._channels * kh)

    @property
    def _kernel_shape(self):
        return (*self.kernel_size, self._channels, self.filters)

    def matrix_from_kernel(self, kernel):
        kh, kw, c, n = np.shape(kernel)
        if self.factorization == "channel":  # K'[n, (h, w, c)] = kernel[h, w, c, n]
            return np.transpose(kernel, (3, 0, 1, 2)).reshape(n, kh * kw * c)
        # K'[(n, w), (c, h)] = kernel[h, w, c, n]
        return np.transpose(kernel, (3, 1, 2, 0)).reshape(n * kw, c * kh)

    def kernel_from_matrix(self, matrix):
        kh, kw = self.kernel_size
        n, c = self.filters, self._channels
        if self.factorization == "channel":
            return np.transpose(np.asarray(matrix).reshape(n, kh, kw, c), (1, 2, 3, 0))
        return np.transpose(np.asarray(matrix).reshape(n, kw, c, kh), (3, 1, 2, 0))

    def build(self, input_shape):
        self._channels = int(input_shape[-1])
        self._build_factors()

    def sub_kernels(self, feedback=False):
        """The kernels of the two convolutions: spatial, (vertical (kh,1,C,r),
        horizontal (1,kw,r,N)); channel, ((kh,kw,C,r), 1x1 (1,1,r,N))."""
        kh, kw = self.kernel_size
        r = self.rank
        us, vs = self._scaled_factors(feedback)
        if self.factorization == "channel":
            first = ops.reshape(vs, (kh, kw, self._channels, r))
            second = ops.reshape(ops.transpose(us), (1, 1, r, self.filters))
            return first, second
        vertical = ops.transpose(ops.reshape(vs, (self._channels, kh, r)), (1, 0, 2))
        vertical = ops.expand_dims(vertical, 1)  # (kh, 1, C, r)
        horizontal = ops.transpose(ops.reshape(us, (self.filters, kw, r)), (1, 2, 0))
        horizontal = ops.expand_dims(horizontal, 0)  # (1, kw, r, N)
        return vertical, horizontal

    def matrix_inputs(self, x) -> np.ndarray:
        """The rows the layer's matrix multiplies, one per position (float64).

        Channel view: the (kh, kw, C) patch under every output pixel, ordered
        (h, w, c) as the matrix's columns. Spatial view: the (kh, 1, C)
        vertical patch under every pixel the vertical convolution computes,
        ordered (c, h). The spatial view's rows of (n, w) each meet one
        column's patch, so E||(K - K') x||^2 from these rows leaves out the
        cross terms between the kw columns of one output pixel.
        """
        kh, kw = self.kernel_size
        sh, sw = self.strides
        c = self._channels
        x = tf.convert_to_tensor(ops.convert_to_numpy(x), tf.float32)
        padding = self.padding.upper()
        if self.factorization == "channel":
            p = tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], padding)
            return np.asarray(p, np.float64).reshape(-1, kh * kw * c)
        p = tf.image.extract_patches(x, [1, kh, 1, 1], [1, sh, 1, 1], [1, 1, 1, 1], padding)
        p = np.asarray(p, np.float64).reshape(-1, kh, c)
        return np.transpose(p, (0, 2, 1)).reshape(-1, c * kh)

    def call(self, x):
        self._record_input(x)
        y = self._conv(x, feedback=False)
        if self.bias is not None:
            y = y + self.bias
        return y

    def feedback_call(self, x):
        """The convolution whose kernel the feedback factors make (no bias)."""
        return self._conv(x, feedback=True)

    #: time per multiply-add of the spatial view's pair of convolutions (kh x 1, then 1 x kw,
    #: r channels between them) relative to one kh x kw convolution's: 1.5 measured on
    #: 2 CPU cores with oneDNN (``python -m benchmarks.form_cost``: at equal multiply-adds
    #: the pair took 1.46-1.62x the merged form's forward and backward); the channel
    #: view's pair (kh x kw to r channels, then 1 x 1) runs at the merged form's rate
    SPATIAL_PAIR_COST = 1.5

    #: the batch that ``forward="auto"`` counts the merge against (``model_from_config``
    #: sets the run's): not the traced batch, so that one device and a mirrored run (whose
    #: replicas trace half the batch), and a partial last batch, compute in the same form;
    #: not saved: a cost hint only
    batch_hint = 32

    #: the dtype of the forward convolutions' input gradients (``train.error_dtype``, set
    #: by ``precision.set_error_dtype``; not saved: a run's setting); None: float32
    error_dtype = None

    def uses_merged_forward(self, input_shape=None) -> bool:
        """True when one convolution with the kernel merged from the factors costs less
        than the factored pair (``forward="auto"``): multiply-adds, the spatial pair's
        weighted by ``SPATIAL_PAIR_COST`` (its measured speed per multiply-add).

        With ``input_shape`` the merge itself counts: U diag(s) V^T is r x rows x columns
        of the layer's matrix a call, whatever the batch (3.6G for a 512-channel 3x3
        layer at full rank, four times its convolution at batch 8 on 7x7 maps), against
        the pair's extra cost per output pixel over ``batch_hint`` examples (whatever
        the traced batch). Without it, the costs per output pixel
        alone (large batches)."""
        if self.forward != "auto":
            return self.forward == "merged"
        kh, kw = self.kernel_size
        c, n, r, sw = self._channels, self.filters, self.rank, self.strides[1]
        if self.factorization == "channel":
            merged, factored = kh * kw * c * n, kh * kw * c * r + r * n
        else:
            # the vertical convolution runs at every input column (stride sw apart); at
            # equal cost one convolution beats two (50% of full rank: 1.48x BP's step
            # factored, benchmarks/reports/EFFICIENCY.md)
            merged = kh * kw * c * n
            factored = self.SPATIAL_PAIR_COST * (kh * c * r * sw + kw * r * n)
        if input_shape is None or None in tuple(input_shape)[1:3]:
            return merged <= factored
        b, h, w = self.batch_hint, input_shape[1], input_shape[2]
        pixels = (b * _conv_len(h, kh, self.strides[0], self.padding)
                  * _conv_len(w, kw, self.strides[1], self.padding))
        rows, columns = self._matrix_shape
        return pixels * merged + r * rows * columns <= pixels * factored

    def _conv(self, x, feedback):
        if not self.uses_merged_forward(tuple(x.shape)):
            return self._factored_conv(x, feedback)
        return self._one_conv(x, self.kernel_tensor(feedback), self.strides, self.padding,
                              feedback)

    def _one_conv(self, x, kernel, strides, padding, feedback):
        """One convolution of the forward (its input gradient in ``error_dtype``) or of
        the feedback map (as the caller's dtype has it)."""
        if feedback or self.error_dtype in (None, "float32"):
            return ops.conv(x, kernel, strides=strides, padding=padding)
        return error_dtype_conv(x, kernel, strides, padding, self.error_dtype)

    def kernel_tensor(self, feedback=False, dtype=None):
        """The (kh, kw, C, N) kernel made from the factors, differentiable in them; with
        ``dtype``, merged from the factors cast to it (the chain in bfloat16)."""
        U, s, V = (self.B_U, self.B_s, self.B_V) if feedback else (self.U, self.s, self.V)
        if dtype is not None:
            U, s, V = (ops.cast(t, dtype) for t in (U, s, V))
        kh, kw = self.kernel_size
        matrix = ops.matmul(U * s, ops.transpose(V))
        if self.factorization == "channel":  # K'[n, (h, w, c)]
            kernel = ops.reshape(matrix, (self.filters, kh, kw, self._channels))
            return ops.transpose(kernel, (1, 2, 3, 0))
        # K'[(n, w), (c, h)]
        kernel = ops.reshape(matrix, (self.filters, kw, self._channels, kh))
        return ops.transpose(kernel, (3, 1, 2, 0))

    def _factored_conv(self, x, feedback):
        first, second = self.sub_kernels(feedback)
        if self.factorization == "channel":
            y = self._one_conv(x, first, self.strides, self.padding, feedback)
            return self._one_conv(y, second, (1, 1), "valid", feedback)
        sh, sw = self.strides
        y = self._one_conv(x, first, (sh, 1), self.padding, feedback)  # vertical
        return self._one_conv(y, second, (1, sw), self.padding, feedback)  # horizontal

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, _conv_len(h, self.kernel_size[0], self.strides[0], self.padding),
                _conv_len(w, self.kernel_size[1], self.strides[1], self.padding), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "forward": self.forward,
                "factorization": self.factorization,
                **self._svd_config()}

    @classmethod
    def from_conv(cls, layer: keras.layers.Conv2D, rank=None, **kwargs):
        """An SVDConv2D computing what ``layer`` computes (exact at full rank)."""
        if layer.activation not in (None, keras.activations.linear):
            raise ValueError(f"{layer.name}: only linear Conv2D layers convert; "
                             "put the activation in a separate layer")
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            raise ValueError(f"{layer.name}: dilated or grouped convolutions are not supported")
        if layer.data_format != "channels_last":
            raise ValueError(f"{layer.name}: only channels_last convolutions are supported")
        new = cls(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                  rank=rank, use_bias=layer.use_bias, name=kwargs.pop("name", layer.name), **kwargs)
        kernel = ops.convert_to_numpy(layer.kernel)
        new._initial_kernel = kernel
        new.build((None, None, None, kernel.shape[2]))
        if layer.use_bias:
            new.bias.assign(ops.convert_to_numpy(layer.bias))
        return new


def _pair(v):
    if isinstance(v, int):
        return (v, v)
    return tuple(int(x) for x in v)


def _conv_len(n, k, s, padding):
    if n is None:
        return None
    if padding == "same":
        return -(-n // s)
    return (n - k) // s + 1


def svd_layers(layer) -> list:
    """All SVD layers inside ``layer`` (itself included), in build order."""
    found = []
    if isinstance(layer, SVDLayer):
        found.append(layer)
    for sub in getattr(layer, "_flatten_layers", lambda **_: [])(include_self=False, recursive=True):
        if isinstance(sub, SVDLayer):
            found.append(sub)
    return found
