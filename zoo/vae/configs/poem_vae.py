"""The author's CNN + VAE poem generator (post 5332) on 5-character couplets.

    zoo train poem_vae                 # Adam 1e-3, batch 64, 4,000 steps (~9.4 epochs)
    zoo train poem_vae --config smoke  # seconds
The post trains 100 epochs; on 2 CPU cores this budget is what a reproducible run affords.
"""

import ml_collections

from zoo.core.config import check_variant, train_defaults


def get_config(arg: str = ""):
    check_variant("poem_vae", arg)
    c = ml_collections.ConfigDict()
    c.model_name = "poem_vae"
    c.seed = 0
    # min_count=1: every character has its own id, so no target is <unk> (the author built the vocabulary from all data)
    c.data = dict(name="poetry_couplets", batch_size=64, min_count=1, train_limit=0, test_limit=0)
    c.model = dict(embed_dim=64, latent_dim=64)
    c.optim = dict(learning_rate=1e-3, grad_clip=10.0)
    # Remedies for posterior collapse, off as in the post: KL weight 0 -> 1 over kl_warmup_steps;
    # free_bits: nats per latent dimension (batch mean) below which KL is not penalised.
    c.loss = dict(kl_warmup_steps=0, free_bits=0.0)
    c.eval = dict(batch_size=512, num_samples=20, seed=1)
    c.train = train_defaults(num_steps=4000, log_every=200, ckpt_every=1000)
    if arg == "smoke":
        c.data.update(batch_size=16, train_limit=200, test_limit=20)
        c.model.update(embed_dim=16, latent_dim=8)
        c.eval.update(batch_size=32, num_samples=8)
        c.train.update(num_steps=4, log_every=2, ckpt_every=2)
    return c
