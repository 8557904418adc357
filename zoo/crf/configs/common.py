"""Defaults shared by the CRF configs."""

import ml_collections

from zoo.core.config import train_defaults


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "crf_ner"
    c.seed = 0
    c.data = dict(
        name="msra_ner", data_dir="", batch_size=64, eval_batch_size=256, bucket=32, max_len=128,
        min_count=1, train_limit=0, test_limit=0,
    )  # fmt: skip
    c.model = dict(
        embed_dim=128, encoder="cnn", features=128, kernel_size=3, dilations=(1, 1, 1), residual=False,
        lstm_layers=1, dropout=0.0, use_start_end=False, constrained=True, constrain_start_end=True,
    )  # fmt: skip
    c.optim = dict(
        learning_rate=1e-3, warmup_steps=200, final_lr_fraction=0.05, weight_decay=0.0, grad_clip=5.0,
        transitions_lr_multiplier=1.0,
    )  # fmt: skip
    c.train = train_defaults(num_steps=5000, log_every=100, ckpt_every=1000)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few seconds on CPU: tiny model, a slice of the data, a handful of steps."""
    c.data.update(batch_size=8, eval_batch_size=16, train_limit=400, test_limit=64)
    c.model.update(embed_dim=16, features=16)
    c.train.update(num_steps=20, log_every=5, ckpt_every=10)
    c.optim.warmup_steps = 2
    return c
