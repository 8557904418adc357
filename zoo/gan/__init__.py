"""GANs with optax (posts 9, 20, 30–33): the loss zoo, gradient penalties, alternating and
single-loss stop-gradient updates over one ``{"g", "d"}`` tree and one ``optax.partition``,
generator EMA and spectral normalisation, Dirac-GAN dynamics, latent MCMC, and evaluation
with a classifier trained in the zoo.

Modules: :mod:`~zoo.gan.losses` (``get_loss``, ``LOSSES``), :mod:`~zoo.gan.penalties`,
:mod:`~zoo.gan.models` (MLP and DCGAN players), :mod:`~zoo.gan.train` (the updates),
:mod:`~zoo.gan.evaluation` (classifier FID), :mod:`~zoo.gan.dirac`,
:mod:`~zoo.gan.energy`, :mod:`~zoo.gan.task` (``zoo train dcgan | mlp_gan``).
"""

from zoo.gan.losses import LOSSES, GanLoss, get_loss
from zoo.gan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, make_models
from zoo.gan.train import (
    Players,
    ema_update,
    init_variables,
    make_optimizer,
    make_players,
    make_spec,
    make_update,
    spectral_constraint,
    update_player,
)

__all__ = [
    "LOSSES", "GanLoss", "get_loss",
    "DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator", "make_models",
    "Players", "ema_update", "init_variables", "make_optimizer", "make_players", "make_spec", "make_update",
    "spectral_constraint", "update_player",
]  # fmt: skip
