"""VAE and the author's simplest CVAE in Flax Linen (posts 5253, 5343, 5383; ``bojone/vae``).

Encoders map images ``[B, H, W, C]`` to ``(mean, raw_logvar)`` ``[B, D]``; decoders map
``z [B, D]`` to per-pixel outputs ``[B, H, W, C]`` (Bernoulli logits, or a Gaussian mean).

* :class:`MLPEncoder` / :class:`MLPDecoder`: vae_keras.py's 784-256-z-256-784 with ReLU
  (``hidden=(256,)``; the author's latent size is 2, here ``latent_dim``); LeCun-normal
  kernels and ``U(±1/√fan_in)`` biases (:func:`fan_in_uniform_bias`).
* :class:`ConvEncoder` / :class:`ConvDecoder`: vae_keras_cnn.py: ``levels`` blocks of
  [3×3 conv stride 2, 3×3 conv stride 1] with LeakyReLU(0.2), the filters doubled before each
  block starting from ``filters = 16`` (so 32, 64 at 28×28 → 7×7), then Dense heads; the
  decoder mirrors it with transposed convolutions, halving the filters, and ends in a 3×3
  convolution to the image channels. Flax's ``"SAME"`` convolutions, computed on CPU by
  :class:`zoo.core.layers.SameConv` / ``SameConvTranspose`` (same parameters and function;
  the step at batch 100 went from 442 to 249 ms on the 2-core CPU).
* :class:`VAE`: ``__call__(x, key) -> (recon, mean, logvar, z)`` with one reparameterised
  sample ``z = μ + σ·ε``; ``encode``, ``decode``, ``prior_mean``, ``sample`` (from the prior),
  ``log_likelihood`` (Bernoulli from logits, or Gaussian with a fixed or learned per-pixel
  log-scale) and ``log_weights`` (``K`` importance samples for the IWAE bound).
* :class:`CVAE`: the author's "simplest CVAE" (cvae_keras.py): encoder and decoder see no
  label; a ``Dense(one-hot → D)`` gives every class a learned mean ``μ^Y``, which is the
  prior mean in the KL (``(μ − μ^Y)²``) and where class-conditional samples are drawn.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error
from zoo.core.layers import SameConv, SameConvTranspose
from zoo.vae import losses

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
LOCATION_SCALE = ("gaussian", "logistic")  # decoders with a mean and a log-scale per pixel
SCALES = ("fixed", "pixel", "decoder")


def fan_in_uniform_bias(fan_in: int):
    """Bias initialiser ``U(±1/√fan_in)`` (``torch.nn.Linear``'s default).

    The MLPs use it instead of zeros: with zero biases every ReLU unit fed by the latent
    starts as a hinge through ``z = 0``, which with the author's 2-D latent measurably slows
    the decoder (after 1,500 steps on ``mnist_5k``, −ELBO about 3 nats worse in our runs).
    """

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features, fan_in, name=None):
    return nn.Dense(features, bias_init=fan_in_uniform_bias(fan_in), name=name)


class MLPEncoder(nn.Module):
    latent_dim: int = 2
    hidden: Sequence[int] = (256,)

    @nn.compact
    def __call__(self, x):
        h = jnp.reshape(x, (x.shape[0], -1))
        for width in self.hidden:
            h = nn.relu(_dense(width, h.shape[-1])(h))
        return _dense(self.latent_dim, h.shape[-1], "mean")(h), _dense(self.latent_dim, h.shape[-1], "logvar")(h)


class MLPDecoder(nn.Module):
    image_shape: Sequence[int] = (28, 28, 1)
    hidden: Sequence[int] = (256,)

    @nn.compact
    def __call__(self, z):
        h = z
        for width in reversed(tuple(self.hidden)):
            h = nn.relu(_dense(width, h.shape[-1])(h))
        out = _dense(math.prod(self.image_shape), h.shape[-1], "out")(h)
        return jnp.reshape(out, (z.shape[0], *self.image_shape))


class ConvEncoder(nn.Module):
    latent_dim: int = 2
    filters: int = 16
    levels: int = 2

    @nn.compact
    def __call__(self, x):
        h, f = x, self.filters
        # Named as nn.Conv would be (Conv_0, Conv_1, ...): the parameter tree is unchanged.
        for level in range(self.levels):
            f *= 2
            h = nn.leaky_relu(SameConv(f, 3, 2, name=f"Conv_{2 * level}")(h), 0.2)
            h = nn.leaky_relu(SameConv(f, 3, 1, name=f"Conv_{2 * level + 1}")(h), 0.2)
        h = jnp.reshape(h, (h.shape[0], -1))
        return nn.Dense(self.latent_dim, name="mean")(h), nn.Dense(self.latent_dim, name="logvar")(h)


class ConvDecoder(nn.Module):
    image_shape: Sequence[int] = (28, 28, 1)
    filters: int = 16
    levels: int = 2

    @nn.compact
    def __call__(self, z):
        h_img, w_img, c = self.image_shape
        scale = 2**self.levels
        if h_img % scale or w_img % scale:
            expected = f"H and W divisible by 2**levels = {scale}"
            raise _error("ConvDecoder", "image_shape", expected, tuple(self.image_shape))
        f = self.filters * scale  # the encoder's last width
        h = nn.Dense(h_img // scale * w_img // scale * f)(z)
        h = jnp.reshape(h, (z.shape[0], h_img // scale, w_img // scale, f))
        for level in range(self.levels):
            h = nn.leaky_relu(SameConvTranspose(f, 3, 1, name=f"ConvTranspose_{2 * level}")(h), 0.2)
            h = nn.leaky_relu(SameConvTranspose(f, 3, 2, name=f"ConvTranspose_{2 * level + 1}")(h), 0.2)
            f //= 2
        return SameConvTranspose(c, 3, 1, name="out")(h)


class VAE(nn.Module):
    """A Gaussian-posterior VAE around any encoder/decoder pair.

    Attributes:
      encoder: ``x [B, H, W, C] -> (mean, raw_logvar) [B, D]``.
      decoder: ``z [B, D] -> [B, H, W, C]`` logits (Bernoulli) or means (Gaussian).
      image_shape: ``(H, W, C)``; latent_dim: ``D``.
      likelihood: ``"bernoulli"`` (pixels in {0, 1}, or the author's BCE on [0, 1]),
        ``"gaussian"``, or ``"logistic"`` (dequantised 8-bit pixels: each pixel's bin under a
        logistic, :func:`zoo.vae.losses.discretized_logistic_log_likelihood`; its mean and
        log-scale come as the Gaussian's do).
      scale: the Gaussian (or logistic) decoder's log-scale: ``"fixed"`` at ``log_scale`` (post
        5343: MSE), ``"pixel"``: a learned per-pixel parameter initialised at ``log_scale``, or
        ``"decoder"``: predicted per pixel and per example by the decoder, whose output then
        has ``2C`` channels (means, then raw log-scales clamped to ``±log_scale_bound``).
        A learned parameter moves about one learning rate per Adam step, too slowly to
        reach the small scales of near-constant pixels (MNIST's background) in a short run;
        the decoder's output gets there within a few hundred steps.
      logvar_bound: the bound of the encoder's log-variance (:func:`zoo.vae.losses.stable_logvar`).
      clamp: how both log-variance bounds are applied, ``"hard"`` (clip, the default) or
        ``"soft"`` (tanh, the earlier default: run directories whose config has no
        ``model.clamp`` were trained with it and load as soft); see
        :func:`zoo.vae.losses.stable_logvar` for why a binding soft clamp drifts under Adam.
    """

    encoder: nn.Module
    decoder: nn.Module
    image_shape: Sequence[int] = (28, 28, 1)
    latent_dim: int = 2
    likelihood: str = "bernoulli"
    scale: str = "pixel"
    log_scale: float = 0.0
    logvar_bound: float = 10.0
    log_scale_bound: float = 8.0
    clamp: str = "hard"

    def setup(self):
        if self.clamp not in losses.CLAMPS:
            raise _error(type(self).__name__, "clamp", f"one of {losses.CLAMPS}", repr(self.clamp))
        if self.likelihood not in LIKELIHOODS:
            raise _error(type(self).__name__, "likelihood", f"one of {LIKELIHOODS}", repr(self.likelihood))
        if self.scale not in SCALES:
            raise _error(type(self).__name__, "scale", f"one of {SCALES}", repr(self.scale))
        if self.likelihood in LOCATION_SCALE and self.scale == "pixel":
            self.pixel_log_scale = self.param(
                "pixel_log_scale", nn.initializers.constant(self.log_scale), tuple(self.image_shape)
            )
        self._setup_prior()

    def _setup_prior(self):
        pass

    # ---- pieces ------------------------------------------------------------------
    def _check_images(self, x):
        if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:]) != tuple(self.image_shape):
            raise _error(type(self).__name__, "x", f"images [B, {', '.join(map(str, self.image_shape))}]",
                         f"shape {tuple(jnp.shape(x))}")  # fmt: skip
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise _error(type(self).__name__, "x", "floating point (binarised or dequantised pixels)",
                         f"dtype {jnp.result_type(x)}")  # fmt: skip

    def encode(self, x):
        """``x [B, H, W, C]`` -> ``(mean, logvar)`` ``[B, D]``, log-variance clamped (``clamp``)."""
        self._check_images(x)
        mean, raw = self.encoder(x)
        return mean, losses.stable_logvar(raw, self.logvar_bound, self.clamp)

    def decode(self, z):
        """``z [B, D]`` -> logits (Bernoulli) or means (Gaussian) ``[B, H, W, C]``; with
        ``scale="decoder"``, means and raw log-scales ``[B, H, W, 2C]``."""
        return self.decoder(z)

    def prior_mean(self, labels=None):
        """Mean of ``p(z)`` per example: the scalar 0 here (the CVAE's class means)."""
        return 0.0

    def gaussian_params(self, recon):
        """Decoder output -> ``(mean, log_scale)`` of the Gaussian or logistic decoder (see ``scale``)."""
        if self.scale == "decoder":
            c = recon.shape[-1] // 2
            return recon[..., :c], losses.stable_logvar(recon[..., c:], self.log_scale_bound, self.clamp)
        if self.scale == "pixel":
            return recon, self.pixel_log_scale
        return recon, jnp.asarray(self.log_scale, jnp.float32)

    def log_likelihood(self, recon, x):
        """``log p(x | z)`` ``[B]`` from the decoder output ``recon``."""
        if self.likelihood == "bernoulli":
            return losses.bernoulli_log_likelihood(recon, x)
        mean, log_scale = self.gaussian_params(recon)
        if self.likelihood == "logistic":
            return losses.discretized_logistic_log_likelihood(mean, x, log_scale)
        return losses.gaussian_log_likelihood(mean, x, log_scale)

    def mean_image(self, recon):
        """Decoder output -> the expected image in [0, 1] (for grids)."""
        if self.likelihood == "bernoulli":
            return jax.nn.sigmoid(recon)
        return jnp.clip(self.gaussian_params(recon)[0], 0.0, 1.0)

    # ---- the model ---------------------------------------------------------------
    def __call__(self, x, key, labels=None):
        """One reparameterised pass: ``(recon, mean, logvar, z)``."""
        mean, logvar = self.encode(x)
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        z = mean + jnp.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar, z

    def negative_elbo(self, x, key, labels=None):
        """``[B]``: ``−log p(x|z) + KL(q(z|x) ‖ p(z))``, analytic KL, one sample of z."""
        recon, mean, logvar, _ = self(x, key, labels)
        return -losses.elbo(self.log_likelihood(recon, x), mean, logvar, self.prior_mean(labels))

    def log_weights(self, x, key, k: int, labels=None):
        """``[K, B]`` log importance weights of ``k`` posterior samples (one encoder pass;
        sample ``i`` uses ``fold_in(key, i)``, so the first ``k`` of a larger ``k`` agree)."""
        mean, logvar = self.encode(x)
        prior = self.prior_mean(labels)

        def one(i):
            eps = jax.random.normal(jax.random.fold_in(key, i), mean.shape, mean.dtype)
            z = mean + jnp.exp(0.5 * logvar) * eps
            return losses.log_importance_weights(self.log_likelihood(self.decode(z), x), z, mean, logvar, prior)

        return jax.vmap(one)(jnp.arange(k))

    def negative_iwae(self, x, key, k: int, labels=None):
        """``[B]``: ``−L_k``; ``k = 1`` is the single-sample Monte Carlo negative ELBO."""
        return -losses.iwae_bound(self.log_weights(x, key, k, labels))

    def sample(self, key, num: int, labels=None):
        """``num`` draws ``z ~ p(z)`` decoded to expected images in [0, 1] ``[num, H, W, C]``."""
        z = jax.random.normal(key, (num, self.latent_dim)) + self.prior_mean(labels)
        return self.mean_image(self.decode(z))

    def reconstruct(self, x, labels=None):
        """Decodes the posterior means: expected images in [0, 1]."""
        mean, _ = self.encode(x)
        return self.mean_image(self.decode(mean))


class CVAE(VAE):
    """The author's simplest CVAE: ``p(z|y) = N(μ^Y, I)`` with ``μ^Y = Dense(one_hot(y))``."""

    num_classes: int = 10

    def _setup_prior(self):
        self.class_means = nn.Dense(self.latent_dim, name="class_means")

    def prior_mean(self, labels=None):
        if labels is None:
            raise _error("CVAE", "labels", "class labels [B] (the prior mean is the class mean)", None)
        if jnp.ndim(labels) != 1 or not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            got = f"shape {tuple(jnp.shape(labels))}, dtype {jnp.result_type(labels)}"
            raise _error("CVAE", "labels", "integer class labels [B]", got)
        return self.class_means(jax.nn.one_hot(labels, self.num_classes))

    def __call__(self, x, key, labels=None):
        if labels is None:  # init and plain passes still create the class means
            labels = jnp.zeros((jnp.shape(x)[0],), jnp.int32)
        self.prior_mean(labels)
        return super().__call__(x, key, labels)
