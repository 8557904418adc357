"""Glow (Kingma & Dhariwal 2018; post 5807) on Fashion-MNIST: 2 levels × 8 steps of
actnorm (data init) → invertible 1×1 conv (LU) → affine coupling (width 128), split2d
priors, learned top prior; Adam 1e-3 with warmup, batch 64.

    bash scripts/get_data.sh fashion_mnist && zoo train glow
Variants: ``smoke`` (seconds); ``author`` — the author's Keras Glow: actnorm initialised
at zero, a random fixed channel permutation, additive coupling, CondActnorm splits, a
final actnorm and a standard normal top; ``author_smoke``.
"""

from zoo.flows.configs.common import base_config, check_variant, smoke


def get_config(arg: str = ""):
    check_variant("glow", arg, ("", "smoke", "author", "author_smoke"))
    c = base_config()
    c.model_name = "glow"
    if arg.startswith("author"):
        c.model.update(actnorm="zero", permutation="random", coupling="additive", final_actnorm=True, learn_top=False)
    if arg.endswith("smoke"):
        smoke(c)
    return c
