"""DCGAN (Radford et al. 2016) on Fashion-MNIST with the non-saturating loss, alternating
1:1 updates, Adam(2e-4, β₁ 0.5), batch 64, generator EMA 0.999 (post 9).

    bash scripts/get_data.sh fashion_mnist && zoo train dcgan
    zoo train dcgan --config.gan.loss=hinge --config.gan.update_mode=single   # post 33's one-loss step

Variants: ``smoke`` (seconds); ``size64`` — the 64×64 DCGAN (4 levels, width 64 → 512)
on the data resized to 64×64; ``size64_smoke``; ``energy`` — post 32's energy view: the
WGAN objective, a 0-centred gradient penalty on real samples (λ₁ = 10) and an encoder
whose reconstruction error ``λ₂·E‖z − E(G(z))‖²`` (λ₂ = 1) stands in for G's entropy;
``energy_smoke``.
"""

from zoo.gan.configs.common import base_config, check_variant, smoke


def get_config(arg: str = ""):
    check_variant("dcgan", arg, ("", "smoke", "size64", "size64_smoke", "energy", "energy_smoke"))
    c = base_config()
    c.model_name = "dcgan"
    if arg.startswith("size64"):
        c.model.image_size = 64
    if arg.startswith("energy"):
        c.gan.update(loss="wgan", penalty="zero_gp", penalty_weight=10.0, encoder_weight=1.0)
    if arg.endswith("smoke"):
        smoke(c)
    return c
