"""A 'VALID' 2-D convolution (cross-correlation, any stride) as one batched matmul in the
discrete Fourier domain.

Why. CapsNet's primary-capsule convolution (9×9, stride 2, 256 → 256 channels on 20×20
maps) is nearly all of the model's arithmetic: 191 M multiply-adds per image forward, three
times that with the gradients. As an im2col matmul (``zoo.core.layers.im2col_conv``) it
also materialises 300 MB of patches at batch 100. In the Fourier domain a convolution is a
pointwise product, and with channels it is a *channel matmul per frequency bin*, so the
work falls with the kernel's area: 592 instead of 2,916 multiply-adds per (image, input
channel, output channel) for that layer (148 real products of 4·256 channels).

The algorithm, for ``x [B, H, W, C]``, ``kernel [kh, kw, C, F]``, stride ``s``:

1. Polyphase split (space-to-depth): a stride-``s`` convolution is a stride-1 convolution
   of the ``s×s`` phases, ``x'[B, n, m, s²C]`` with kernel ``k'[th, tw, s²C, F]``
   (``th = ⌈kh/s⌉``, the kernel zero-padded to ``s·th``). ``n = ho + th − 1`` rows (and
   ``m`` columns) are exactly the ones the ``ho`` outputs read, so a circular correlation
   of size ``n × m`` equals the linear one on every output (no wrap-around).
2. Real DFT of size ``n × m`` (one bin of each conjugate pair: :func:`half_spectrum`) of ``x'`` and of
   ``k'``, each a matmul by a constant matrix over the spatial positions.
3. Per bin, ``Z = X · conj(K)`` summed over the ``s²C`` channels: complex matrix products
   ``[B, s²C] × [s²C, F]``. Gauss's trick writes each as three real products
   (``T0 = (Xr + Xi)·Kr``, ``T1 = Xr·(−Kr − Ki)``, ``T2 = Xi·(Kr − Ki)``; ``Re Z = T0 − T2``,
   ``Im Z = T0 + T1``); bins whose DFT is real (frequency 0 or n/2 on both axes) need one.
   The "+" combinations are folded into the DFT matrices, so step 3 is a single batched
   matmul ``[P, B, s²C] × [P, s²C, F]`` over the ``P`` products.
4. The inverse DFT, restricted to the ``ho × wo`` outputs and with the ``T → Z``
   recombination folded in, is one more constant matmul.

So ``y = E · bmm(Fx · x', Fk · k')``, like Winograd's ``Aᵀ[(G g) ⊙ (Bᵀ d)]``, but with
the DFT's unit-modulus entries: its float32 error matches a direct convolution's (the tests
compare both with a float64 oracle). The three constant matmuls have hand-written VJPs
that multiply by the transposed constant, which XLA:CPU runs as plain matmuls instead of
transposing the big operand (reverse mode only: ``jax.jvp``, ``jacfwd`` and ``hessian``
through them raise).

Measured ad hoc on the project's 2-core CPU, CapsNet's layer at batch 100, forward and both
gradients with a ``sin`` after it: im2col 1.39 s, this 0.74 s (medians of five calls; ranges
1.36–2.03 and 0.60–0.79 s).
``zoo.core.layers.cpu_conv`` takes this path where ``fourier_pays`` (a cost model) says so.

:func:`fourier_conv_reference` is ``lax.conv_general_dilated`` at HIGHEST precision.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.checks import argument_error as _error

_DIMS = ("NHWC", "HWIO", "NHWC")
_HIGHEST = lax.Precision.HIGHEST  # no TF32 or bfloat16 passes on accelerators: the error claim is float32's


def _check(fn, x, kernel, stride):
    xs, ks = jnp.shape(x), jnp.shape(kernel)
    if len(xs) != 4:
        raise _error(fn, "x", "[B, H, W, C] (rank 4)", f"shape {tuple(xs)}")
    if len(ks) != 4 or ks[2] != xs[3]:
        raise _error(fn, "kernel", f"[kh, kw, C, F] with C = {xs[3]} (x's channels)", f"shape {tuple(ks)}")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise _error(fn, "stride", "an int >= 1", repr(stride))
    if xs[1] < ks[0] or xs[2] < ks[1]:
        raise _error(fn, "x", f"at least the kernel's {ks[0]}×{ks[1]} pixels", f"{xs[1]}×{xs[2]}")
    for name, a in (("x", x), ("kernel", kernel)):
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            raise _error(fn, name, "floating point", f"dtype {jnp.result_type(a)}")
    if jnp.result_type(kernel) != jnp.result_type(x):  # as lax.conv_general_dilated
        raise _error(fn, "kernel", f"x's dtype {jnp.result_type(x)}", f"dtype {jnp.result_type(kernel)}")


def phase_geometry(h: int, w: int, kh: int, kw: int, stride: int):
    """``(ho, wo, th, tw, n, m)`` for an ``h×w`` input and a ``kh×kw`` kernel: the output size,
    the taps per phase (``⌈kh/s⌉``) and the phase-image rows and columns the outputs read
    (``ho + th − 1``), i.e. the DFT size. Shared with the CPU cost model
    (``zoo.core.layers.fourier_pays``)."""
    s = stride
    ho, wo = (h - kh) // s + 1, (w - kw) // s + 1
    th, tw = -(-kh // s), -(-kw // s)
    return ho, wo, th, tw, ho + th - 1, wo + tw - 1


def half_spectrum(n: int, m: int):
    """The bins ``(u, v)`` of an ``n×m`` real DFT that determine all the others: one of each
    conjugate pair (``X[−u, −v] = conj X[u, v]`` for real input) and every self-conjugate
    bin. Columns ``0 < v < m/2`` are all kept (their conjugates have ``v > m/2``); in the
    columns ``v = 0`` and ``v = m/2`` (m even), which are their own conjugate columns, only
    ``u <= n/2``. Returns int arrays ``(u, v)``: ``n·(m//2 + 1)`` bins less the duplicates,
    e.g. 52 instead of 60 for 10×10."""
    u, v = np.meshgrid(np.arange(n), np.arange(m // 2 + 1), indexing="ij")
    u, v = u.ravel(), v.ravel()
    keep = ((0 < v) & (2 * v < m)) | (2 * u <= n)
    return u[keep], v[keep]


def num_products(n: int, m: int) -> int:
    """``P``, the real products of an ``n×m`` DFT: three per bin of :func:`half_spectrum`, one
    per real bin (frequency 0 or n/2 on both axes)."""
    real_bins = (1 + (n % 2 == 0)) * (1 + (m % 2 == 0))
    return 3 * len(half_spectrum(n, m)[0]) - 2 * real_bins


@functools.lru_cache(maxsize=64)
def fourier_matrices(n: int, m: int, th: int, tw: int, ho: int, wo: int):
    """The constants of ``y = E · bmm(Fx · x, Fk · k)`` for a stride-1 correlation of an
    ``n×m`` input with a ``th×tw`` kernel, outputs ``ho×wo`` (``ho <= n − th + 1``).

    Returns float64 ``(fx [P, n·m], fk [P, th·tw], e [ho·wo, P])``; row/column ``p`` is one
    real product of step 3 in the module docstring.
    """
    u, v = half_spectrum(n, m)

    def dft(hh, ww):  # [bins, hh·ww] real and imaginary parts of sum_p x[p] e^{-2πi(up/n + vq/m)}
        p, q = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
        angle = 2 * np.pi * (np.outer(u, p.ravel()) / n + np.outer(v, q.ravel()) / m)
        return np.cos(angle), -np.sin(angle)

    xr, xi = dft(n, m)
    kr, ki = dft(th, tw)
    i, j = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    angle = 2 * np.pi * (np.outer(i.ravel(), u) / n + np.outer(j.ravel(), v) / m)  # [ho·wo, bins]
    # the inverse DFT sums all n·m bins: each kept bin stands for itself and its conjugate
    # (same real part of the sum), so it counts twice unless it is self-conjugate
    self_conjugate = (2 * u % n == 0) & (2 * v % m == 0)
    weight = np.where(self_conjugate, 1.0, 2.0) / (n * m)
    er, ei = np.cos(angle) * weight, -np.sin(angle) * weight  # y = Σ er·Re Z + ei·Im Z

    fx, fk, e = [], [], []
    for b in range(len(u)):
        if self_conjugate[b]:  # Im X = Im K = 0: Re Z = Xr·Kr, Im Z = 0
            fx.append(xr[b]), fk.append(kr[b]), e.append(er[:, b])
            continue
        # T0 = (Xr + Xi)·Kr,  T1 = Xr·(−Kr − Ki),  T2 = Xi·(Kr − Ki)
        fx += [xr[b] + xi[b], xr[b], xi[b]]
        fk += [kr[b], -kr[b] - ki[b], kr[b] - ki[b]]
        e += [er[:, b] + ei[:, b], ei[:, b], -er[:, b]]  # Re Z = T0 − T2, Im Z = T0 + T1
    return np.stack(fx), np.stack(fk), np.stack(e, axis=1)


def _constant_matmul(matrix: np.ndarray, dtype):
    """``x [K, N] -> matrix @ x`` whose VJP multiplies by the stored transpose (an NN
    matmul, where autodiff's transposed dot makes XLA:CPU transpose the big operand)."""
    forward = np.asarray(matrix, dtype)
    backward = np.ascontiguousarray(forward.T)

    @jax.custom_vjp
    def apply(x):
        return jnp.dot(forward, x, precision=_HIGHEST)

    def apply_fwd(x):
        return apply(x), None

    def apply_bwd(_, g):
        return (jnp.dot(backward, g, precision=_HIGHEST).astype(dtype),)

    apply.defvjp(apply_fwd, apply_bwd)
    return apply


def fourier_conv(x, kernel, stride: int = 1):
    """``lax.conv_general_dilated(x, kernel, (s, s), "VALID")`` (NHWC, HWIO) computed in the
    Fourier domain (module docstring).

    Args:
      x: ``[B, H, W, C]`` float.
      kernel: ``[kh, kw, C, F]``, ``kh <= H``, ``kw <= W``, x's dtype.
      stride: s >= 1, both axes.
    Returns:
      ``[B, (H − kh)//s + 1, (W − kw)//s + 1, F]`` in x's dtype. Half-precision inputs are
      computed in float32: the DFT constants and Gauss's ``T0 − T2`` cancel digits that
      bfloat16 does not have (2.5× a direct convolution's error, ad hoc).
    """
    _check("fourier_conv", x, kernel, stride)
    out_dtype = x.dtype
    x, kernel = (a.astype(jnp.promote_types(out_dtype, jnp.float32)) for a in (x, kernel))
    b, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    s = stride
    ho, wo, th, tw, n, m = phase_geometry(h, w, kh, kw, s)
    x = x[:, : n * s, : m * s]
    x = jnp.pad(x, ((0, 0), (0, n * s - x.shape[1]), (0, m * s - x.shape[2]), (0, 0)))
    kernel = jnp.pad(kernel, ((0, th * s - kh), (0, tw * s - kw), (0, 0), (0, 0)))
    cc = s * s * c  # channels of the phase images, ordered (row phase, column phase, C)
    # [(n m), (B, s, s, C)]: spatial positions first, so the DFT is a plain matmul
    phases = x.reshape(b, n, s, m, s, c).transpose(1, 3, 0, 2, 4, 5).reshape(n * m, b * cc)
    taps = kernel.reshape(th, s, tw, s, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(th * tw, cc * f)
    fx, fk, e = fourier_matrices(n, m, th, tw, ho, wo)
    p = fx.shape[0]
    x_hat = _constant_matmul(fx, x.dtype)(phases).reshape(p, b, cc)
    k_hat = _constant_matmul(fk, x.dtype)(taps).reshape(p, cc, f)
    products = jnp.einsum("pbc,pcf->pbf", x_hat, k_hat, precision=_HIGHEST)  # step 3: one batched matmul
    y = _constant_matmul(e, x.dtype)(products.reshape(p, b * f))  # [(ho wo), (B F)]
    return y.reshape(ho, wo, b, f).transpose(2, 0, 1, 3).astype(out_dtype)


def fourier_conv_reference(x, kernel, stride: int = 1):
    """XLA's convolution at HIGHEST precision: the definition :func:`fourier_conv` must match."""
    _check("fourier_conv_reference", x, kernel, stride)
    return lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=_DIMS,
                                    precision=lax.Precision.HIGHEST)
