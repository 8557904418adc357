"""RealNVP (Dinh et al. 2017) as post 5807 describes it: channel-wise affine couplings
(no checkerboard) with squeeze and the multi-scale split, the halves swapped by a fixed
channel reversal between couplings; 2 levels × 8 couplings, width 128, no actnorm.

    bash scripts/get_data.sh fashion_mnist && zoo train realnvp
Variants: ``smoke`` (seconds).
"""

from zoo.flows.configs.common import base_config, check_variant, smoke


def get_config(arg: str = ""):
    check_variant("realnvp", arg)
    c = base_config()
    c.model_name = "realnvp"
    c.model.update(actnorm="none", permutation="reverse", coupling="affine")
    if arg == "smoke":
        smoke(c)
    return c
