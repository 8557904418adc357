"""Defaults shared by the flow configs."""

import ml_collections

from zoo.core.config import check_variant, train_defaults  # noqa: F401  (re-exported for the config files)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "glow"
    c.seed = 0
    c.data = dict(
        name="fashion_mnist", data_dir="", batch_size=64, eval_batch_size=500, train_limit=0, test_limit=0,
        init_batch_size=512,
    )  # fmt: skip
    c.model = dict(
        kind="multiscale", levels=2, depth=8, width=128, actnorm="data", permutation="lu", coupling="affine",
        learn_top=True, final_actnorm=False, scan=True, remat="auto", coupling_init="lecun", logscale_factor=0.0,
        priors="split2d",
        # NICE
        num_couplings=4, hidden=1000, num_hidden_layers=5, output_relu=True, sign=-1.0,
    )  # fmt: skip
    c.optim = dict(learning_rate=1e-3, warmup_steps=200, grad_clip=50.0)
    c.eval = dict(temperatures=(0.5, 0.7, 0.8, 1.0), num_samples=32, noise_seed=1)
    c.train = train_defaults(num_steps=3000, log_every=100, ckpt_every=500)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds on CPU: a slice of the data, a tiny model, a handful of steps."""
    c.data.update(batch_size=8, eval_batch_size=50, train_limit=200, test_limit=50, init_batch_size=32)
    c.model.update(levels=2, depth=2, width=16, hidden=32, num_hidden_layers=2)
    c.eval.update(temperatures=(0.7, 1.0), num_samples=8)
    c.optim.warmup_steps = 2
    c.train.update(num_steps=4, log_every=2, ckpt_every=2)
    return c
