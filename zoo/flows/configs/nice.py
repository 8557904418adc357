"""NICE (Dinh et al. 2014) as in post 5776: 4 additive couplings on the flat image, order
reversed then split even/odd before each, m(·) = 5 × Dense(1000) + ReLU with ReLU on the
output too, the author's sign (x2 ← x2 − m(x1)), a final diagonal scale; batch 128.

    bash scripts/get_data.sh fashion_mnist && zoo train nice
Variants: ``smoke`` (seconds).
"""

from zoo.flows.configs.common import base_config, check_variant, smoke


def get_config(arg: str = ""):
    check_variant("nice", arg)
    c = base_config()
    c.model_name = "nice"
    c.model.kind = "nice"
    c.data.batch_size = 128
    if arg == "smoke":
        smoke(c)
    return c
