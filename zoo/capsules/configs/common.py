"""Defaults shared by the capsule configs."""

import ml_collections

from zoo.core.config import check_variant, train_defaults  # noqa: F401  (re-exported for the config files)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "capsnet"
    c.seed = 0
    c.data = dict(
        name="fashion_mnist", data_dir="", batch_size=100, eval_batch_size=500, shift=2, train_limit=0,
        test_limit=0, two_digit=False, two_digit_seed=0, resize=0, flip=False,
    )  # fmt: skip
    c.model = dict(
        kind="capsnet", routing="sabour", num_iters=3, conv_features=256, primary_types=32, primary_dim=8,
        class_dim=16, decoder_features=(512, 1024), hidden=128, caps1_types=16, caps2_types=16,
        inverse_temperature=0.01, routing_chunk=32, bias_grad_as_matmul=False,
    )  # fmt: skip
    c.loss = dict(
        down_weight=0.5, reconstruction_weight=0.0005, margin_start=0.2, margin_end=0.9, margin_steps=1,
    )  # fmt: skip
    c.optim = dict(learning_rate=1e-3, decay_per_epoch=1.0, grad_clip=5.0)
    c.train = train_defaults(num_steps=1000, log_every=50, ckpt_every=500)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds on CPU: a slice of the data, a narrow model, a handful of steps."""
    c.data.update(batch_size=8, eval_batch_size=50, train_limit=200, test_limit=50)
    c.train.update(num_steps=4, log_every=2, ckpt_every=2)
    return c
