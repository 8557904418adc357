"""Defaults shared by the GAN configs."""

import ml_collections

from zoo.core.config import check_variant, train_defaults  # noqa: F401  (re-exported for the config files)


def adam(learning_rate=2e-4, b1=0.5, b2=0.999):
    return dict(name="adam", learning_rate=learning_rate, b1=b1, b2=b2, decay=0.9)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "dcgan"
    c.seed = 0
    c.data = dict(name="fashion_mnist", data_dir="", batch_size=64, train_limit=0)
    c.model = dict(
        arch="dcgan", image_size=28, channels=1, z_dim=100, z_dist="normal", g_width=64, d_width=64, d_norm="none",
        pixel_range="symmetric",  # or "unit": [0, 1] pixels (the author's MLP GAN)
    )  # fmt: skip
    c.gan = dict(
        loss="gan", update_mode="alternating", n_critic=1, single_loss_weight=1.0,
        penalty="none", penalty_weight=10.0, div_k=2.0, div_p=6.0,
        ema_decay=0.999, spectral_constraint=False,
        encoder_weight=0.0,  # > 0: post 32's encoder entropy term λ₂·E‖z − E(G(z))‖²
    )  # fmt: skip
    c.optim = dict(g=adam(), d=adam())
    # reference_*: the evaluation classifier's steps (0 = zoo.gan.evaluation's default) and data (0 = whole split)
    # inception_weights: a weights file for the real Inception FID (pytorch-fid's .pth, see
    # zoo.gan.inception); "" leaves it out. inception_side: the network's input (299; tests: 75).
    c.eval = dict(num_samples=5000, batch_size=500, grid=64, noise_seed=1, reference_steps=0,
                  reference_train_limit=0, reference_test_limit=0,
                  inception_weights="", inception_side=299, inception_batch_size=100)  # fmt: skip
    c.train = train_defaults(num_steps=5000, log_every=100, ckpt_every=1000)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds on CPU: a slice of the data, a narrow model, a handful of steps."""
    c.data.update(batch_size=8, train_limit=200)
    c.model.update(g_width=8, d_width=8)
    c.eval.update(num_samples=64, batch_size=32, grid=16, reference_steps=20, reference_train_limit=500, reference_test_limit=200)
    c.train.update(num_steps=4, log_every=2, ckpt_every=2)
    return c
