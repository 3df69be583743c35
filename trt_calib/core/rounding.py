"""INT8 weight rounding that TensorRT's own weight rule recovers: per-channel scales, nearest and GPTQ-style codes.

TensorRT quantises a Conv/Deconv/FC kernel per output channel with s = max|w| / 127 and q = round-half-even(w / s)
(TensorRT Developer Guide, "Working with INT8 > Introduction to Quantization": "s = max(abs(x_min), abs(x_max)) /
127", roundWithTiesToEven; per-channel scaling of the kernel's output-channel axis), and `qdq.weights.quantize_weight`
writes the same codes for TensorRT 11. A float weight W' = s * q whose largest element of each channel is +-127 s
gives that rule back exactly s (to a float32 ulp) and exactly q, so choosing q here decides what both TensorRT paths
run. `channel_scales` is that rule, `nearest_codes` its plain rounding, `gptq_codes` the sequential rounding that
pushes each input column's rounding error onto the columns not yet rounded, through the inverse of the layer's
input second moments H = E[x x^T] (Frantar et al. 2022, "GPTQ"; Frantar & Alistarh 2022, "Optimal Brain
Compression"), with the scales fixed and each channel's largest weight pinned at +-127.

Everything works on *grouped rows*: a layer's weight as [G, R, K] (G groups, R output channels each, K inputs per
channel, in the order the layer's input patches are laid out) with H of shape [G, K, K]; a dense layer has G = 1, a
depthwise convolution G = channels and R = 1. `LayerMoments` accumulates H, and with a second (reference) input
also C = E[x_ref x^T] and the reference output's power, so a layer can be fitted to the float model's output W x_ref from
the inputs x the already-rounded layers before it produce (`reference_target`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "QMAX",
    "channel_scales",
    "pinned_elements",
    "nearest_codes",
    "gptq_codes",
    "reference_target",
    "dead_inputs",
    "output_error",
    "dequantized",
    "recovered_codes",
    "conv_patches",
    "LayerMoments",
]

QMAX = 127  # symmetric int8 weights: codes -127..127 (TensorRT never uses -128 for weights)
#: An input whose mean square is below this share of the layer's largest is taken as never seen on the data.
DEAD_RTOL = 1e-12


# ---------------------------------------------------------------------------------------------- the weight rule
def channel_scales(rows: np.ndarray) -> np.ndarray:
    """TensorRT's per-channel weight scale for each row of [..., K]: float32(max|w|) / 127 in float32; 1 for an
    all-zero row (its codes stay 0)."""
    amax = np.max(np.abs(np.asarray(rows, np.float32)), axis=-1)
    s = (amax / np.float32(QMAX)).astype(np.float32)
    return np.where(s > 0, s, np.float32(1.0)).astype(np.float32)


def pinned_elements(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, code): per row the element of largest |w| (the first of ties) is pinned to sign(w) * 127, so the
    row's max|W'| stays 127 s and the rule gives back s."""
    rows = np.asarray(rows)
    idx = np.argmax(np.abs(rows), axis=-1)
    mask = np.zeros(rows.shape, bool)
    np.put_along_axis(mask, idx[..., None], True, axis=-1)
    code = np.where(rows >= 0, float(QMAX), -float(QMAX))
    return mask, code


def nearest_codes(rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Round to nearest (half to even, like TensorRT and ONNX QuantizeLinear), clipped to +-127, pinned elements
    at +-127: exactly what the rule gives for the original weights."""
    rows = np.asarray(rows, np.float32)
    q = np.clip(np.rint(rows / scales[..., None]), -QMAX, QMAX)
    mask, code = pinned_elements(rows)
    return np.where(mask, code, q)


def dequantized(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 weight s * q that carries the codes."""
    return (np.asarray(codes, np.float32) * scales[..., None].astype(np.float32)).astype(np.float32)


def recovered_codes(weight_rows: np.ndarray) -> np.ndarray:
    """The codes TensorRT's per-channel rule takes from float weight rows (what a check of the output recomputes)."""
    rows = np.asarray(weight_rows, np.float32)
    s = channel_scales(rows)
    return np.clip(np.rint(rows / s[..., None]), -QMAX, QMAX)


# ---------------------------------------------------------------------------------------------- second moments
def conv_patches(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...],
                 dilations: tuple[int, ...]) -> np.ndarray:
    """The input patches a convolution multiplies its kernel with, as a view [B, C, *out, *kernel].

    `pads` in ONNX order (all begins, then all ends); a negative pad crops.
    """
    nd = len(kernel)
    spatial = tuple(range(2, 2 + nd))
    begins, ends = pads[:nd], pads[nd:]
    if any(p > 0 for p in pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)])
    if any(p < 0 for p in pads):
        x = x[(slice(None), slice(None)) + tuple(slice(-min(b, 0), x.shape[2 + i] + min(e, 0))
                                               for i, (b, e) in enumerate(zip(begins, ends)))]
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    view = np.lib.stride_tricks.sliding_window_view(x, extent, axis=spatial)
    pick = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    pick += tuple(slice(None, None, d) for d in dilations)
    return view[pick]


@dataclass
class LayerMoments:
    """Running sums over every output position of a layer: H = sum x x^T of its inputs (per group), and with a
    reference input (the float model's) C = sum x_ref x^T and the reference output's power per channel,
    P = sum (w x_ref)^2 for the layer's original `rows` [G, R, K]; `n` positions.

    `add` takes patch matrices [G, K, n] in float32; the products are float32 (BLAS) and summed in float64. P comes
    from F = sum x_ref x_ref^T when that is cheaper (R >= K), else from the outputs w x_ref themselves.
    """

    rows: np.ndarray
    with_reference: bool = False
    n: int = 0
    h: np.ndarray = field(init=False)
    c: np.ndarray | None = field(init=False, default=None)
    power: np.ndarray | None = field(init=False, default=None)
    f: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, np.float32)
        g, r, k = self.rows.shape
        self.h = np.zeros((g, k, k))
        if self.with_reference:
            self.c = np.zeros((g, k, k))
            if r >= k:
                self.f = np.zeros((g, k, k))
            else:
                self.power = np.zeros((g, r))

    def add(self, x: np.ndarray, reference: np.ndarray | None = None) -> None:
        x = np.asarray(x, np.float32)
        xt = np.swapaxes(x, 1, 2)
        self.h += np.matmul(x, xt)
        if self.with_reference:
            if reference is None:
                raise ValueError("this LayerMoments was made with_reference: pass the reference patches too")
            ref = np.asarray(reference, np.float32)
            self.c += np.matmul(ref, xt)
            if self.f is not None:
                self.f += np.matmul(ref, np.swapaxes(ref, 1, 2))
            else:
                y = np.matmul(self.rows, ref)
                self.power += np.einsum("grn,grn->gr", y, y, dtype=np.float64)
        self.n += x.shape[2]

    def means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, C, P): means over positions; P [G, R] is E[(w x_ref)^2]. Without a reference input C = H (the
        inputs are their own reference)."""
        n = max(self.n, 1)
        h = self.h / n
        w = self.rows.astype(np.float64)
        if not self.with_reference:
            return h, h, np.sum(np.matmul(w, h) * w, axis=-1)
        if self.f is not None:
            return h, self.c / n, np.sum(np.matmul(w, self.f / n) * w, axis=-1)
        return h, self.c / n, self.power / n


def dead_inputs(h: np.ndarray) -> np.ndarray:
    """[G, K] True where an input's mean square is 0 (or negligible) on the data: nothing there to fit."""
    diag = np.einsum("gkk->gk", h)
    top = diag.max(axis=1, keepdims=True)
    return diag <= DEAD_RTOL * np.where(top > 0, top, 1.0)


def _damped(h: np.ndarray, dead: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(H with dead inputs decoupled (H_ii = 1, no coupling), lambda per group = damp * mean live diagonal)."""
    h = h.copy()
    g_idx, k_idx = np.nonzero(dead)
    h[g_idx, k_idx, :] = 0.0
    h[g_idx, :, k_idx] = 0.0
    h[g_idx, k_idx, k_idx] = 1.0
    diag = np.einsum("gkk->gk", h)
    live = np.where(dead, 0.0, diag)
    count = np.maximum((~dead).sum(axis=1), 1)
    lam = damp * live.sum(axis=1) / count
    lam = np.where(lam > 0, lam, damp)
    return h, lam


def reference_target(rows: np.ndarray, h: np.ndarray, c: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """The weights W* that best give the reference output from this layer's actual inputs, pulled towards W:
    argmin E|W x_ref - W* x|^2 + lambda |W* - W|^2 = W (C + lambda I)(H + lambda I)^-1 (per group).

    The ridge pulls towards the original weights, never towards zero: image-patch H has eigenvalues 1e-4 of its
    mean diagonal, and a ridge towards 0 shrinks such a layer's weights by most of their size. Inputs never seen on
    the data keep their weights.
    """
    w = np.asarray(rows, np.float64)
    dead = dead_inputs(h)
    hd, lam = _damped(h, dead, damp)
    c = c.copy()
    g_idx, k_idx = np.nonzero(dead)
    c[g_idx, :, k_idx] = 0.0
    c[g_idx, k_idx, k_idx] = 1.0
    eye = np.eye(h.shape[-1])[None]
    lam = lam[:, None, None]
    rhs = np.matmul(w, c + lam * eye)  # [G, R, K]
    target = np.swapaxes(np.linalg.solve(hd + lam * eye, np.swapaxes(rhs, 1, 2)), 1, 2)
    return np.where(dead[:, None, :], w, target)


def output_error(rows: np.ndarray, new_rows: np.ndarray, h: np.ndarray, c: np.ndarray, power: np.ndarray) -> np.ndarray:
    """[G, R] E|w x_ref - w' x|^2 per output channel: the reference output (original weights on the reference
    input) against the new weights on the actual input; P - 2 w C w'^T + w' H w'^T, clipped at 0."""
    w = np.asarray(rows, np.float64)
    v = np.asarray(new_rows, np.float64)
    err = power - 2 * np.sum(np.matmul(w, c) * v, axis=-1) + np.sum(np.matmul(v, h) * v, axis=-1)
    return np.maximum(err, 0.0)


# ---------------------------------------------------------------------------------------------- GPTQ
def gptq_codes(target: np.ndarray, scales: np.ndarray, h: np.ndarray, *, pinned: tuple[np.ndarray, np.ndarray],
               damp: float = 0.01, block: int = 128, act_order: bool = True) -> np.ndarray:
    """Codes [G, R, K] for `target` [G, R, K] on fixed `scales` [G, R], chosen one input column at a time, each
    column's rounding error pushed onto the columns not yet rounded through the Cholesky factor of (H + lambda I)^-1.

    Columns go by decreasing H diagonal (act order) unless `act_order` is False. `pinned` (mask, code), as
    `pinned_elements` gives, fixes each channel's largest element at +-127. Inputs never seen on the data
    (dead) get H_ii = 1 and no coupling, so they round to nearest and take no error from other columns. A code may
    land more than one step from the original weight's nearest code: the error feedback needs that freedom.
    Lazy batch updates of `block` columns keep the work in matrix products.
    """
    w = np.array(target, np.float64)
    groups, rows, k = w.shape
    s = np.asarray(scales, np.float64)
    mask, code = pinned
    dead = dead_inputs(h)
    hd, lam = _damped(h, dead, damp)
    hd = hd + lam[:, None, None] * np.eye(k)[None]
    if act_order:
        perm = np.argsort(-np.einsum("gkk->gk", hd), axis=1, kind="stable")
    else:
        perm = np.broadcast_to(np.arange(k), (groups, k)).copy()
    hp = np.take_along_axis(np.take_along_axis(hd, perm[:, :, None], 1), perm[:, None, :], 2)
    idx = np.broadcast_to(perm[:, None, :], w.shape)
    w = np.take_along_axis(w, idx, 2)
    mask = np.take_along_axis(np.broadcast_to(mask, w.shape), idx, 2)
    code = np.take_along_axis(np.broadcast_to(code, w.shape), idx, 2)
    hinv = np.linalg.inv(hp)
    hinv = (hinv + np.swapaxes(hinv, 1, 2)) / 2
    u = np.swapaxes(np.linalg.cholesky(hinv), 1, 2)  # upper triangular, hinv = u^T u
    q = np.zeros_like(w)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, :, b0:b1].copy()
        errs = np.zeros_like(wb)
        ub = u[:, b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = wb[:, :, i]
            qi = np.clip(np.rint(col / s), -QMAX, QMAX)
            qi = np.where(mask[:, :, b0 + i], code[:, :, b0 + i], qi)
            err = (col - qi * s) / ub[:, i, i][:, None]
            wb[:, :, i:] -= err[:, :, None] * ub[:, None, i, i:]
            q[:, :, b0 + i] = qi
            errs[:, :, i] = err
        if b1 < k:
            w[:, :, b1:] -= np.matmul(errs, u[:, b0:b1, b1:])
    inverse = np.argsort(perm, axis=1)
    return np.take_along_axis(q, np.broadcast_to(inverse[:, None, :], q.shape), 2)
