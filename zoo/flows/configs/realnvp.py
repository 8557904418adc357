"""RealNVP (Dinh et al. 2017) as post 5807 describes it: channel-wise affine couplings
(no checkerboard) with squeeze and the multi-scale split, the halves swapped by a fixed
channel reversal between couplings; 2 levels × 8 couplings, width 128.

RealNVP normalises with batch norm between couplings; actnorm with data init stands in
for it, as in the Glow paper's comparison (reverse vs shuffle vs 1×1 conv, all with
actnorm). Without it the bounded coupling scale, sigmoid(h + 2) < 1, can only contract,
and nothing but the priors re-expands the data: 8.2 bpd after 300 steps against Glow's
5.3. So the one difference from ``glow`` is the fixed reversal instead of the 1×1 conv.

    bash scripts/get_data.sh fashion_mnist && zoo train realnvp
Variants: ``smoke`` (seconds).
"""

from zoo.flows.configs.common import base_config, check_variant, smoke


def get_config(arg: str = ""):
    check_variant("realnvp", arg)
    c = base_config()
    c.model_name = "realnvp"
    c.model.update(actnorm="data", permutation="reverse", coupling="affine")
    if arg == "smoke":
        smoke(c)
    return c
