"""SVD form W = U diag(s) V^T: the factor algebra and the state every SVD layer shares.

``SVDLayer`` (mixed into ``SVDDense`` and ``SVDConv2D``) creates the forward
factors and the fixed feedback factors of the same shapes, merges them back
into a kernel, computes the exact spectrum of a trained layer and re-factors
it at a lower rank (docs/ALGORITHM.md §2 and §5).
"""

from __future__ import annotations

import functools

import numpy as np
import keras
from keras import ops
from threadpoolctl import ThreadpoolController

from ssa_tf import allowed_values


@functools.cache
def _blas():
    return ThreadpoolController()  # after NumPy is loaded: it lists the BLAS libraries then


def serial_blas(fn):
    """Run ``fn`` with NumPy's BLAS on one thread. The matrices here are small (at most a
    few thousand wide), and beside TensorFlow's own busy threads a multi-threaded
    OpenBLAS stalled: a resnet32 rank cut took 11-46 s instead of 1-2 s
    (benchmarks/reports/EFFICIENCY.md, "The cut's stall")."""
    @functools.wraps(fn)
    def serial(*args, **kwargs):
        with _blas().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return serial

# --------------------------------------------------------------------------
# Factor algebra shared by both layer types (NumPy, float64 for exactness).
# --------------------------------------------------------------------------

@serial_blas
def svd_factors(matrix: np.ndarray, rank: int | None = None):
    """Return (U, s, V) of ``matrix`` (m x n) truncated to ``rank`` columns."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    r = s.shape[0] if rank is None else int(rank)
    return u[:, :r], s[:r], vt[:r].T


FEEDBACK_CUTS = allowed_values.RANK_FEEDBACK_CUTS  # how truncate cuts the feedback factors
CUT_ENERGIES = allowed_values.RANK_ENERGIES
FORWARD_FORMS = allowed_values.FORWARD_FORMS  # how SVDConv2D evaluates its convolution
CONV_FACTORIZATIONS = allowed_values.CONV_FACTORIZATIONS


@serial_blas
def exact_singular_values(U, s, V):
    """Exact SVD of U diag(s) V^T without forming it (docs/ALGORITHM.md §5).

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


def resolve_feedback_cut(feedback, input_cov=None):
    """``feedback`` (a ``FEEDBACK_CUTS`` name), or the default when None: "slots" for the
    weight-energy cut (the factors keep their slots and B stays in register, so the
    alignment term does not jump at a cut; docs/ALGORITHM.md §5),
    "first" for an output-energy cut (``input_cov`` given), which re-factors by
    construction."""
    if feedback is not None:
        return feedback
    return "slots" if input_cov is None else "first"


def live_slots(U, s, V) -> np.ndarray:
    """Slots whose u_k, s_k, v_k are not all zero (a cut in place zeroes the rest; a live
    component never is all zero, even at init_scale 0)."""
    return np.flatnonzero(np.any(U != 0, axis=0) | (s != 0) | np.any(V != 0, axis=0))


def slot_order(U, s, V):
    """The components by decreasing energy s_k^2 ||u_k||^2 ||v_k||^2 (ties: lower slot first)."""
    weight = s ** 2 * np.sum(U ** 2, axis=0) * np.sum(V ** 2, axis=0)
    return np.argsort(-weight, kind="stable")


@serial_blas
def slot_spectrum(U, s, V):
    """A spectrum whose energy rank is the slot cut's: the r-th value squared is the weight
    energy the r-th component of ``slot_order`` adds, so that ``energy_rank(spectrum, tau)``
    is the smallest r whose slot cut keeps 1 - ||W - W_cut||^2 / ||W||^2 >= tau. Unlike
    singular values it need not decrease (the components are not orthogonal)."""
    order = slot_order(U, s, V)
    Us, Vs, ss = U[:, order], V[:, order], s[order]
    gram = (Us.T @ Us) * (Vs.T @ Vs) * np.outer(ss, ss)  # <s_j u_j v_j^T, s_k u_k v_k^T>
    # dropped[r] = ||W - W_r||^2 = the sum of gram over the components after the first r
    suffix = np.cumsum(np.cumsum(gram[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
    dropped = np.append(np.diag(suffix), 0.0)
    return np.sqrt(np.maximum(-np.diff(dropped), 0.0))


@serial_blas
def slot_cut(U, s, V, rank):
    """Keep the ``rank`` components of largest s_k^2 ||u_k||^2 ||v_k||^2, in their slots:
    (U, s, V, slots, energy) with energy = 1 - ||W - W_cut||_F^2 / ||W||_F^2."""
    keep = np.sort(slot_order(U, s, V)[:rank])
    drop = np.setdiff1d(np.arange(len(s)), keep)
    total = float(np.sum(exact_singular_values(U, s, V)[1] ** 2))
    lost = float(np.sum(exact_singular_values(U[:, drop], s[drop], V[:, drop])[1] ** 2)) \
        if len(drop) else 0.0
    return U[:, keep], s[keep], V[:, keep], keep, 1.0 - lost / max(total, 1e-30)


@serial_blas
def output_cut(matrix, input_cov, rank: int):
    """Best rank-``rank`` approximation of ``matrix`` (m x n) for inputs of second moment
    ``input_cov`` (n x n, E[x x^T]): the X minimizing E||(matrix - X) x||^2.

    With G = matrix C matrix^T (the outputs' second moment) and P its top-``rank``
    eigenvectors, X = P P^T matrix: the weight projected on the output
    directions that carry the most energy on these inputs. Needs no inverse of
    C, so dead inputs do no harm. Returns (U, s, V, energy): X's exact factors
    and the fraction of output energy it keeps.
    """
    M = np.asarray(matrix, np.float64)
    gram = M @ np.asarray(input_cov, np.float64) @ M.T
    eig, vecs = np.linalg.eigh((gram + gram.T) / 2)
    eig, vecs = np.clip(eig[::-1], 0, None), vecs[:, ::-1]
    r = int(rank)
    p = vecs[:, :r]
    a, sig, bt = np.linalg.svd(p.T @ M, full_matrices=False)
    energy = float(eig[:r].sum() / max(eig.sum(), 1e-30))
    return p @ a, sig, bt.T, energy


@serial_blas
def output_spectrum(matrix, input_cov) -> np.ndarray:
    """Square roots of the eigenvalues of matrix C matrix^T, descending: the
    output-energy analogue of the singular values (``energy_rank`` takes either)."""
    M = np.asarray(matrix, np.float64)
    gram = M @ np.asarray(input_cov, np.float64) @ M.T
    return np.sqrt(np.clip(np.linalg.eigvalsh((gram + gram.T) / 2)[::-1], 0, None))


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


class SVDLayer:
    """State and maths common to SVDDense and SVDConv2D (a mixin of keras.layers.Layer).

    Subclasses define ``_matrix_shape`` (m, n) of the layer's matrix view,
    ``kernel_from_matrix`` / ``matrix_from_kernel`` (Keras kernel layout) and
    the forward computation.
    """

    # set by training.rank.input_covariances while it records what the layer multiplies
    _input_hook = None

    def _record_input(self, x):
        if self._input_hook is not None:
            self._input_hook(self, x)

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
    full_rank = property(lambda self: min(self._matrix_shape))

    @property
    def rank(self) -> int:  # the variables' (a cut in place keeps it): live_rank counts
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
    @serial_blas
    def merged_matrix(self) -> np.ndarray:
        U, s, V = (np.asarray(ops.convert_to_numpy(v), np.float64) for v in (self.U, self.s, self.V))
        return (U * s) @ V.T

    def merged_kernel(self) -> np.ndarray:
        """The kernel in Keras layout that this layer computes (float32)."""
        return self.kernel_from_matrix(self.merged_matrix()).astype(np.float32)

    @serial_blas
    def feedback_matrix(self) -> np.ndarray:
        B_U, B_s, B_V = (np.asarray(ops.convert_to_numpy(v), np.float64)
                         for v in (self.B_U, self.B_s, self.B_V))
        return (B_U * B_s) @ B_V.T

    # -- live components ---------------------------------------------------------
    def live_slots(self) -> np.ndarray:  # the components no cut in place zeroed
        return live_slots(*(ops.convert_to_numpy(v) for v in (self.U, self.s, self.V)))

    live_rank = property(lambda self: int(len(self.live_slots())))

    def _live(self, feedback=False, slots=None):
        """The factors (B's with ``feedback``) at the live slots, float64."""
        slots = self.live_slots() if slots is None else slots
        names = ("B_U", "B_s", "B_V") if feedback else ("U", "s", "V")
        return [np.asarray(ops.convert_to_numpy(getattr(self, n)), np.float64)[..., slots]
                for n in names]

    def spectrum(self) -> np.ndarray:
        """Exact singular values of the current weight, descending (its live components)."""
        return exact_singular_values(*self._live())[1]

    def slot_spectrum(self) -> np.ndarray:
        """The spectrum whose energy rank is the slot cut's (``slot_spectrum``)."""
        return slot_spectrum(*self._live())

    def output_spectrum(self, input_cov) -> np.ndarray:
        """The output-energy spectrum on inputs of second moment ``input_cov`` (``output_cut``)."""
        return output_spectrum(self.merged_matrix(), input_cov)

    @serial_blas
    def truncate(self, rank: int, feedback: str | None = None, input_cov=None,
                 in_place=False) -> dict:
        """Re-factor exactly and cut to ``rank`` (docs/ALGORITHM.md §5).

        The forward weight becomes the best rank-``rank`` approximation of the current
        weight (Eckart-Young), or with ``input_cov`` (the second moment of what the layer's
        matrix multiplies, ``matrix_inputs``) the one that best keeps the layer's outputs on
        those inputs (``output_cut``; the energy is then the output energy kept). The feedback:

        - ``"slots"`` (the default without ``input_cov``): no re-factoring, the kept
          components (``slot_cut``) keep their slots and B its columns at them;
        - ``"first"`` (the paper's; the default with ``input_cov``): keep B's first
          ``rank`` components. The forward factors are now in a new basis (the exact
          SVD's), so component i of B no longer matches component i of the forward ones;
        - ``"svd"``: re-factored the same way, B becomes its own best rank-r approximation
          in its exact SVD basis, each component's sign matched to the forward one (u_i and
          v_i flipped together leave B unchanged); when B tracks the forward weight, the
          bases agree and the alignment term stays as small as before the cut.

        The cut reads the live components (``live_slots``). By default the variables are
        recreated at the new shapes: the caller rebuilds its optimizer and retraces. ``in_place`` keeps every shape: the kept components go into live
        slots (their own, or the first ones for a re-factoring cut), every other slot zero
        in U, s, V and B: the same layer, nothing to retrace (a zero component gets no
        gradient from the task, eq. 5 or eq. 12).
        Returns a record with old/new (live) rank and retained energy.
        """
        feedback = resolve_feedback_cut(feedback, input_cov)
        if feedback not in FEEDBACK_CUTS:
            raise ValueError(f"feedback must be one of {FEEDBACK_CUTS}, got {feedback!r}")
        live = self.live_slots()  # all of them unless cut in place before
        old, rank = len(live), int(rank)
        if not 1 <= rank <= old:
            raise ValueError(f"{self.name}: cannot truncate rank {old} to {rank}")
        current = self._live(slots=live)
        feedback_now = [f.astype(np.float32) for f in self._live(True, live)]
        kept = np.arange(rank)  # where in ``live`` the kept components go
        if feedback == "slots":
            if input_cov is not None:
                raise ValueError("feedback cut 'slots' keeps the layer's own components; an "
                                 "output-energy cut re-factors them (use 'first' or 'svd')")
            U, sig, V, kept, energy = slot_cut(*current, rank)
            fb = [f[..., kept] for f in feedback_now]
        else:
            if input_cov is None:
                U, sig, V = exact_singular_values(*current)
                energy = float((sig[:rank] ** 2).sum() / max((sig ** 2).sum(), 1e-30))
            else:
                U, sig, V, energy = output_cut(self.merged_matrix(), input_cov, rank)
            U, sig, V = U[:, :rank], sig[:rank], V[:, :rank]
            if feedback == "first":
                fb = [f[..., :rank] for f in feedback_now]
            else:
                bu, bs, bv = exact_singular_values(*feedback_now)
                bu, bs, bv = bu[:, :rank], bs[:rank], bv[:, :rank]
                flip = np.where(np.sum(bu * U, axis=0) < 0, -1.0, 1.0)
                fb = [bu * flip, bs, bv * flip]
        values = (U, sig, V, *fb)
        if in_place:
            for var, value in zip(self.factor_variables(), values):
                full = np.zeros(var.shape, np.float32)
                full[..., live[kept]] = value
                var.assign(full)
        else:
            self._replace_factors(rank, values)
        return {"layer": self.name, "old_rank": old, "new_rank": rank, "energy": energy}

    def compact(self) -> bool:
        """Drop the components a cut in place zeroed: variables recreated at the live rank,
        the function unchanged (the caller rebuilds its optimizer). False: all were live."""
        live = self.live_slots()
        if len(live) == self.rank:
            return False
        self._replace_factors(len(live), (*self._live(slots=live), *self._live(True, live)))
        return True

    def _replace_factors(self, rank, values):
        """New factor variables of rank ``rank`` holding ``values`` (U, s, V, B_U, B_s, B_V)."""
        # Keras locks a built layer's state: unlock, untrack, create anew in the same order
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

    def _scaled_factors(self, feedback=False):
        """U * sqrt|s| * sign(s) and V * sqrt|s|, each half of the spectrum (B's with
        ``feedback``). At s = 0 (a component cut in place) sqrt's gradient is 0, not inf: the
        kernel's 0 * inf is 0 only by TensorFlow's own SqrtGrad, NaN under XLA."""
        U, s, V = (self.B_U, self.B_s, self.B_V) if feedback else (self.U, self.s, self.V)
        a = ops.abs(s)
        root = ops.where(a > 0, ops.sqrt(ops.where(a > 0, a, 1.0)), 0.0)
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
