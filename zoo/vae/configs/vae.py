"""The VAE of posts 5253/5343/5383 (``bojone/vae`` vae_keras.py): MLP 784-256-2-256-784,
Bernoulli decoder (sigmoid + binary cross-entropy from logits), analytic KL, one posterior
sample, batch 100, on dynamically binarised MNIST (``mnist_5k``). Adam 1e-3 (the author
used RMSprop: ``--config.optim.name=rmsprop``). Evaluation: −ELBO and the IWAE bounds
L_5, L_50 in nats per image and bits/dim.

    zoo train vae [--config VARIANT]

Variants (each with a ``_smoke`` twin that runs in seconds; ``smoke`` is the base one):

* ``conv``: vae_keras_cnn.py's convolutional encoder/decoder (filters 32, 64 after doubling
  from 16; LeakyReLU 0.2; transposed convolutions back to 28×28).
* ``cvae``: the author's simplest CVAE (cvae_keras.py): a learned class mean μ^Y =
  Dense(one-hot) as the prior mean, KL with (μ − μ^Y)²; samples column c from class c.
* ``iwae``: trained on the IWAE bound L_k with k = 5 (post 5383) instead of the ELBO.
* ``gaussian``: continuous pixels (uniform dequantisation), Gaussian decoder whose per-pixel
  mean and scale both come from the decoder (``model.scale``: ``"fixed"`` is post 5343's MSE,
  ``"pixel"`` a learned per-pixel scale); latent 16; bits/dim comparable to the flows'.
* ``fashion``: Fashion-MNIST (60k/10k; ``bash scripts/get_data.sh fashion_mnist``),
  continuous pixels, conv encoder/decoder, Gaussian decoder, latent 32.
"""

from zoo.vae.configs.common import base_config, check_variant, smoke

BASES = ("", "conv", "cvae", "iwae", "gaussian", "fashion")
VARIANTS = tuple(v for b in BASES for v in ((b, f"{b}_smoke") if b else ("", "smoke")))


def get_config(arg: str = ""):
    check_variant("vae", arg, VARIANTS)
    c = base_config()
    base = "" if arg == "smoke" else arg.removesuffix("_smoke")
    if base == "conv":
        c.model.kind = "conv"
    elif base == "cvae":
        c.model.conditional = True
        c.train.num_steps = 6000  # the author trained the CVAE for twice the epochs
    elif base == "iwae":
        c.loss.iwae_k = 5
    elif base == "gaussian":
        c.data.binarize = "none"
        c.model.update(likelihood="gaussian", scale="decoder", latent_dim=16)
    elif base == "fashion":
        c.data.name = "fashion_mnist"
        c.data.binarize = "none"
        c.model.update(kind="conv", likelihood="gaussian", scale="decoder", latent_dim=32)
        c.train.num_steps = 10000
    if arg.endswith("smoke"):
        smoke(c)
    return c
