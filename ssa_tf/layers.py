"""Keras layers that keep their weight in SVD form, W = U diag(s) V^T.

Each layer owns its forward factors (``U``, ``s``, ``V``, trainable), a set of
fixed feedback factors of the same shapes (``B_U``, ``B_s``, ``B_V``), knows
how to merge them back into an ordinary kernel and how to re-factor itself
exactly at a lower rank (SPEC sections 2 and 5). The trainer and the rank
callback only call these methods; they never touch the variables directly.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

_PACKAGE = "ssa_tf"


# --------------------------------------------------------------------------
# Factor algebra shared by both layer types (NumPy, float64 for exactness).
# --------------------------------------------------------------------------

def svd_factors(matrix: np.ndarray, rank: int | None = None):
    """Return (U, s, V) of ``matrix`` (m x n) truncated to ``rank`` columns."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    r = s.shape[0] if rank is None else int(rank)
    return u[:, :r], s[:r], vt[:r].T


FEEDBACK_CUTS = ("svd", "first")  # how truncate cuts the feedback factors
FORWARD_FORMS = ("auto", "factored", "merged")  # how SVDConv2D evaluates its convolution


def exact_singular_values(U, s, V):
    """Exact SVD of U diag(s) V^T without forming it (SPEC section 5).

    Trained U and V are only near-orthonormal, so s is not the spectrum of the
    layer. QR of U and V reduces the problem to the SVD of an r x r core.
    Returns (U', s', V') with orthonormal U', V' and s' sorted descending.
    """
    U = np.asarray(U, np.float64)
    V = np.asarray(V, np.float64)
    s = np.asarray(s, np.float64)
    qu, ru = np.linalg.qr(U)
    qv, rv = np.linalg.qr(V)
    core = (ru * s[None, :]) @ rv.T
    a, sig, bt = np.linalg.svd(core)
    return qu @ a, sig, qv @ bt.T


def energy_rank(singular_values, tau: float) -> int:
    """Smallest r with sum_{j<=r} s_j^2 >= tau * sum_j s_j^2 (at least 1)."""
    e = np.asarray(singular_values, np.float64) ** 2
    cum = np.cumsum(e)
    if cum[-1] <= 0:
        return 1
    # compare against the cumulative sum's own total: e.sum() can differ from
    # cum[-1] by rounding, which would wrongly cut (or overflow) at tau = 1
    r = int(np.searchsorted(cum, tau * cum[-1])) + 1
    return min(max(1, r), len(e))


class _SVDMixin:
    """State and maths common to SVDDense and SVDConv2D.

    Subclasses define ``_matrix_shape`` (m, n) of the layer's matrix view,
    ``kernel_from_matrix`` / ``matrix_from_kernel`` (Keras kernel layout) and
    the forward computation.
    """

    def _init_svd(self, rank, use_bias, kernel_initializer, feedback_seed,
                  feedback_init, bias_initializer, init_scale=1.0):
        self._requested_rank = None if rank is None else int(rank)
        # the initial singular values are the drawn matrix's times init_scale
        # (0: a zero layer whose U and V are the draw's singular vectors)
        self.init_scale = float(init_scale)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.feedback_seed = feedback_seed
        if feedback_init not in ("random", "forward"):
            raise ValueError(f"feedback_init must be 'random' or 'forward', got {feedback_init!r}")
        self.feedback_init = feedback_init
        self._initial_kernel = None  # set by from_dense/from_conv

    # -- variables ---------------------------------------------------------
    @property
    def full_rank(self) -> int:
        m, n = self._matrix_shape
        return min(m, n)

    @property
    def rank(self) -> int:
        if self.built:
            return int(self.s.shape[0])
        return self._requested_rank or self.full_rank

    def _make_factor_weights(self, r: int, values=None):
        m, n = self._matrix_shape
        zeros = keras.initializers.Zeros()
        self.U = self.add_weight(name="U", shape=(m, r), initializer=zeros)
        self.s = self.add_weight(name="s", shape=(r,), initializer=zeros)
        self.V = self.add_weight(name="V", shape=(n, r), initializer=zeros)
        self.B_U = self.add_weight(name="B_U", shape=(m, r), initializer=zeros, trainable=False)
        self.B_s = self.add_weight(name="B_s", shape=(r,), initializer=zeros, trainable=False)
        self.B_V = self.add_weight(name="B_V", shape=(n, r), initializer=zeros, trainable=False)
        if values is not None:
            for var, val in zip(self.factor_variables(), values):
                var.assign(np.asarray(val, np.float32))

    def factor_variables(self):
        return [self.U, self.s, self.V, self.B_U, self.B_s, self.B_V]

    def _build_factors(self):
        m, n = self._matrix_shape
        r = self.rank
        if not 1 <= r <= self.full_rank:
            raise ValueError(f"{self.name}: rank {r} outside [1, {self.full_rank}]")
        if self._initial_kernel is not None:
            kernel = np.asarray(self._initial_kernel, np.float64)
        else:
            kernel = np.asarray(self.kernel_initializer(self._kernel_shape), np.float64)
        fwd = svd_factors(self.matrix_from_kernel(kernel), r)
        if self.feedback_init == "forward":
            fb = fwd  # the drawn weight's factors (before init_scale)
        else:
            # an independent matrix drawn like the forward one, with its own seed
            init = self.kernel_initializer.__class__.from_config(
                {**self.kernel_initializer.get_config(), "seed": self.feedback_seed})
            fb = svd_factors(self.matrix_from_kernel(np.asarray(init(self._kernel_shape))), r)
        if self.init_scale != 1.0:
            fwd = (fwd[0], fwd[1] * self.init_scale, fwd[2])
        self._make_factor_weights(r, (*fwd, *fb))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self._out_dim,),
                                        initializer=self.bias_initializer)
        else:
            self.bias = None

    # -- the layer's maths -------------------------------------------------
    def merged_matrix(self) -> np.ndarray:
        U, s, V = (np.asarray(ops.convert_to_numpy(v), np.float64) for v in (self.U, self.s, self.V))
        return (U * s) @ V.T

    def merged_kernel(self) -> np.ndarray:
        """The kernel in Keras layout that this layer computes (float32)."""
        return self.kernel_from_matrix(self.merged_matrix()).astype(np.float32)

    def feedback_matrix(self) -> np.ndarray:
        B_U, B_s, B_V = (np.asarray(ops.convert_to_numpy(v), np.float64)
                         for v in (self.B_U, self.B_s, self.B_V))
        return (B_U * B_s) @ B_V.T

    def spectrum(self) -> np.ndarray:
        """Exact singular values of the current weight, descending."""
        return exact_singular_values(*(ops.convert_to_numpy(v) for v in (self.U, self.s, self.V)))[1]

    def truncate(self, rank: int, feedback: str = "first") -> dict:
        """Re-factor exactly and cut to ``rank`` (SPEC section 5).

        The forward weight becomes the best rank-``rank`` approximation of the
        current weight (Eckart-Young). The feedback factors:

        - ``"first"`` (SPEC): keep their first ``rank`` components. The forward
          factors are now in a new basis (the exact SVD's), so component i of
          B no longer matches component i of the forward factors;
        - ``"svd"``: re-factored the same way, B becomes its own best rank-r
          approximation in its exact SVD basis, each component's sign matched
          to the forward one (flipping u_i and v_i together leaves B
          unchanged). When B tracks the forward weight, the two bases then
          agree and the alignment term stays as small as before the cut.

        Variables are recreated at the new shapes, so the caller must rebuild
        its optimizer and retrace its step. Returns a record with old/new rank
        and retained energy.
        """
        if feedback not in FEEDBACK_CUTS:
            raise ValueError(f"feedback must be one of {FEEDBACK_CUTS}, got {feedback!r}")
        old = self.rank
        rank = int(rank)
        if not 1 <= rank <= old:
            raise ValueError(f"{self.name}: cannot truncate rank {old} to {rank}")
        U, sig, V = exact_singular_values(*(ops.convert_to_numpy(v) for v in (self.U, self.s, self.V)))
        energy = float((sig[:rank] ** 2).sum() / max((sig ** 2).sum(), 1e-30))
        if feedback == "first":
            fb = [np.asarray(ops.convert_to_numpy(v))[..., :rank]
                  for v in (self.B_U, self.B_s, self.B_V)]
        else:
            bu, bs, bv = exact_singular_values(
                *(ops.convert_to_numpy(v) for v in (self.B_U, self.B_s, self.B_V)))
            bu, bs, bv = bu[:, :rank], bs[:rank], bv[:, :rank]
            flip = np.where(np.sum(bu * U[:, :rank], axis=0) < 0, -1.0, 1.0)
            fb = [bu * flip, bs, bv * flip]
        values = (U[:, :rank], sig[:rank], V[:, :rank], *fb)
        # Keras locks a built layer's state; shapes change, so unlock,
        # untrack the old variables and create new ones in the same order.
        tracker = self._tracker
        tracker.unlock()
        try:
            for var in self.factor_variables():
                self._untrack_variable(var)
            bias = self.bias
            if bias is not None:
                self._untrack_variable(bias)
            self._make_factor_weights(rank, values)
            if bias is not None:  # keep the variable order U, s, V, B_*, bias
                self._track_variable(bias)
        finally:
            tracker.lock()
        self._requested_rank = rank
        return {"layer": self.name, "old_rank": old, "new_rank": rank, "energy": energy}

    def _scaled_factors(self, feedback=False):
        """U * sqrt|s| * sign(s) and V * sqrt|s|: each half of the spectrum.

        ``feedback=True`` does the same for the fixed factors B_U, B_s, B_V.
        """
        U, s, V = (self.B_U, self.B_s, self.B_V) if feedback else (self.U, self.s, self.V)
        root = ops.sqrt(ops.abs(s))
        return U * (root * ops.sign(s)), V * root

    def _svd_config(self):
        return {
            "rank": self.rank,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "feedback_seed": self.feedback_seed,
            "feedback_init": self.feedback_init,
            "init_scale": self.init_scale,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SVDDense(_SVDMixin, keras.layers.Layer):
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

    def call(self, x):
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
class SVDConv2D(_SVDMixin, keras.layers.Layer):
    """2-D convolution in spatial-SVD form (SPEC section 2), channels last.

    The kernel K (kh, kw, C, N) is viewed as K'[(n, w), (c, h)] and
    factored; the layer runs a vertical (kh x 1, C -> r) convolution then a
    horizontal (1 x kw, r -> N) convolution, each carrying one axis' stride
    and padding. At full rank it is the original convolution exactly.

    ``forward="auto"`` computes the same function in whichever order costs
    fewer multiply-adds: the two factored convolutions, or one convolution
    with the kernel merged from the factors each step (gradients reach U, s
    and V through the merge). At full rank the factored pair costs about
    twice the plain convolution (r = 3C for a 3x3 kernel), so the merged
    form wins until a cut brings the rank below about half.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", rank=None, use_bias=True,
                 kernel_initializer="he_normal", bias_initializer="zeros", feedback_seed=None,
                 feedback_init="random", init_scale=1.0, forward="auto", **kwargs):
        super().__init__(**kwargs)
        if forward not in FORWARD_FORMS:
            raise ValueError(f"forward must be one of {FORWARD_FORMS}, got {forward!r}")
        self.forward = forward
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
        return (self.filters * kw, self._channels * kh)

    @property
    def _kernel_shape(self):
        return (*self.kernel_size, self._channels, self.filters)

    def matrix_from_kernel(self, kernel):
        kh, kw, c, n = np.shape(kernel)
        # K'[(n, w), (c, h)] = kernel[h, w, c, n]
        return np.transpose(kernel, (3, 1, 2, 0)).reshape(n * kw, c * kh)

    def kernel_from_matrix(self, matrix):
        kh, kw = self.kernel_size
        n, c = self.filters, self._channels
        return np.transpose(np.asarray(matrix).reshape(n, kw, c, kh), (3, 1, 2, 0))

    def build(self, input_shape):
        self._channels = int(input_shape[-1])
        self._build_factors()

    def sub_kernels(self, feedback=False):
        """(vertical (kh,1,C,r), horizontal (1,kw,r,N)) kernels of the two convolutions."""
        kh, kw = self.kernel_size
        r = self.rank
        us, vs = self._scaled_factors(feedback)
        vertical = ops.transpose(ops.reshape(vs, (self._channels, kh, r)), (1, 0, 2))
        vertical = ops.expand_dims(vertical, 1)  # (kh, 1, C, r)
        horizontal = ops.transpose(ops.reshape(us, (self.filters, kw, r)), (1, 2, 0))
        horizontal = ops.expand_dims(horizontal, 0)  # (1, kw, r, N)
        return vertical, horizontal

    def call(self, x):
        y = self._conv(x, feedback=False)
        if self.bias is not None:
            y = y + self.bias
        return y

    def feedback_call(self, x):
        """The convolution whose kernel the feedback factors make (no bias)."""
        return self._conv(x, feedback=True)

    def uses_merged_forward(self) -> bool:
        """True when one convolution with the merged kernel costs fewer multiply-adds
        per output pixel than the factored pair (``forward="auto"``)."""
        if self.forward != "auto":
            return self.forward == "merged"
        kh, kw = self.kernel_size
        c, n, r, sw = self._channels, self.filters, self.rank, self.strides[1]
        # the vertical convolution runs at every input column (stride sw apart)
        return kh * kw * c * n < kh * c * r * sw + kw * r * n

    def _conv(self, x, feedback):
        if not self.uses_merged_forward():
            return self._factored_conv(x, feedback)
        return ops.conv(x, self.kernel_tensor(feedback), strides=self.strides,
                        padding=self.padding)

    def kernel_tensor(self, feedback=False):
        """The (kh, kw, C, N) kernel made from the factors, differentiable in them."""
        U, s, V = (self.B_U, self.B_s, self.B_V) if feedback else (self.U, self.s, self.V)
        kh, kw = self.kernel_size
        matrix = ops.matmul(U * s, ops.transpose(V))  # K'[(n, w), (c, h)]
        kernel = ops.reshape(matrix, (self.filters, kw, self._channels, kh))
        return ops.transpose(kernel, (3, 1, 2, 0))

    def _factored_conv(self, x, feedback):
        vertical, horizontal = self.sub_kernels(feedback)
        sh, sw = self.strides
        y = ops.conv(x, vertical, strides=(sh, 1), padding=self.padding)
        return ops.conv(y, horizontal, strides=(1, sw), padding=self.padding)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, _conv_len(h, self.kernel_size[0], self.strides[0], self.padding),
                _conv_len(w, self.kernel_size[1], self.strides[1], self.padding), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "forward": self.forward,
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LocalBatchNorm(keras.layers.BatchNormalization):
    """Batch norm whose batch statistics are constants in the backward pass.

    SPEC section 4 / seed section 2: batch norm acts in the forward pass only;
    a module's local gradient does not flow through the batch mean and
    variance. With ``stop_stat_gradient=False`` it is ordinary batch norm (BP).
    """

    def __init__(self, stop_stat_gradient=True, **kwargs):
        super().__init__(**kwargs)
        self.stop_stat_gradient = bool(stop_stat_gradient)

    def _moments(self, inputs, mask):
        mean, variance = super()._moments(inputs, mask)
        if self.stop_stat_gradient:
            mean, variance = ops.stop_gradient(mean), ops.stop_gradient(variance)
        return mean, variance

    def get_config(self):
        return {**super().get_config(), "stop_stat_gradient": self.stop_stat_gradient}


def svd_layers(layer) -> list:
    """All SVD layers inside ``layer`` (itself included), in build order."""
    found = []
    if isinstance(layer, _SVDMixin):
        found.append(layer)
    for sub in getattr(layer, "_flatten_layers", lambda **_: [])(include_self=False, recursive=True):
        if isinstance(sub, _SVDMixin):
            found.append(sub)
    return found
