"""Defaults shared by the VAE configs (posts 5253, 5343, 5383)."""

import ml_collections

from zoo.core.config import YNNPACK_NO_REDUCE, check_variant, train_defaults  # noqa: F401  (check_variant: re-exported)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "vae"
    c.seed = 0
    c.data = dict(
        name="mnist_5k", data_dir="", batch_size=100, eval_batch_size=250, binarize="dynamic", binarize_seed=0,
        train_limit=0, test_limit=0,
    )  # fmt: skip
    c.model = dict(
        kind="mlp", likelihood="bernoulli", latent_dim=2, hidden=(256,), conv_filters=16, conv_levels=2,
        conditional=False, num_classes=10, scale="pixel", log_scale=0.0, logvar_bound=10.0,
        log_scale_bound=8.0, clamp="hard",
    )  # fmt: skip
    c.loss = dict(iwae_k=1)
    c.optim = dict(name="adam", learning_rate=1e-3, grad_clip=0.0, schedule="constant")
    c.eval = dict(iwae_k=(5, 50), noise_seed=1, num_samples=80, num_reconstructions=32)
    c.train = train_defaults(num_steps=3000, log_every=100, ckpt_every=1000)
    # The per-example likelihood sums run faster outside YNNPACK's reduce fusions
    # (zoo.core.config.YNNPACK_NO_REDUCE): the MLP step 1.02-1.31x, the conv step 1.05x.
    c.train.cpu_compiler_options = dict(YNNPACK_NO_REDUCE)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds on CPU: a slice of the data, a narrow model, a handful of steps."""
    c.data.update(batch_size=8, eval_batch_size=25, train_limit=200, test_limit=50)
    c.model.update(hidden=(32,), conv_filters=4)
    c.eval.update(iwae_k=(3,), num_samples=20, num_reconstructions=16)
    c.train.update(num_steps=4, log_every=2, ckpt_every=2)
    return c
