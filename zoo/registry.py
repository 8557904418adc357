"""Every model the zoo can train, by name: its family, default config and data set."""

from __future__ import annotations

import importlib
from typing import NamedTuple


class ModelSpec(NamedTuple):
    family: str
    config: str  # module path of the config file (get_config(arg))
    task: str  # module with get_task(config, workdir)
    dataset: str
    description: str


MODELS = {
    "crf_ner": ModelSpec(
        "crf", "zoo.crf.configs.msra_ner", "zoo.crf.task", "msra_ner",
        "character CNN/BiLSTM + linear-chain CRF, Chinese NER (post 5542)",
    ),
    "crf_seg": ModelSpec(
        "crf", "zoo.crf.configs.peoples_daily_seg", "zoo.crf.task", "peoples_daily_seg",
        "the author's CNN-CRF word segmenter, 4 tags s/b/m/e (post 5542)",
    ),
    "capsnet": ModelSpec(
        "capsules", "zoo.capsules.configs.capsnet", "zoo.capsules.task", "fashion_mnist",
        "CapsNet: 32x8D primary -> 10x16D capsules, dynamic routing, reconstruction (Sabour et al.)",
    ),
    "su_capsule": ModelSpec(
        "capsules", "zoo.capsules.configs.su_capsule", "zoo.capsules.task", "mnist_5k",
        "the author's shared-weight capsules, his routing; two-digit test (posts 4819, 5112)",
    ),
    "cnn_baseline": ModelSpec(
        "capsules", "zoo.capsules.configs.cnn_baseline", "zoo.capsules.task", "mnist_5k",
        "the CNN baseline of the same size for the two-digit test (post 4819)",
    ),
    "em_capsnet": ModelSpec(
        "capsules", "zoo.capsules.configs.em_capsnet", "zoo.capsules.task", "fashion_mnist",
        "matrix capsules with EM routing, A=32 B=8 C=D=16, spread loss (post 5155)",
    ),
    "nice": ModelSpec(
        "flows", "zoo.flows.configs.nice", "zoo.flows.task", "fashion_mnist",
        "NICE: 4 additive couplings, 5x1000 ReLU MLPs, diagonal scale (post 5776)",
    ),
    "realnvp": ModelSpec(
        "flows", "zoo.flows.configs.realnvp", "zoo.flows.task", "fashion_mnist",
        "RealNVP: channel-wise affine couplings, squeeze, multi-scale split priors (post 5807)",
    ),
    "glow": ModelSpec(
        "flows", "zoo.flows.configs.glow", "zoo.flows.task", "fashion_mnist",
        "Glow: actnorm, LU 1x1 conv, affine coupling, L levels x K steps (post 5807); variant author",
    ),
    "dcgan": ModelSpec(
        "gan", "zoo.gan.configs.dcgan", "zoo.gan.task", "fashion_mnist",
        "DCGAN 28x28 (variant size64), any loss of zoo.gan.losses, alternating or single-loss updates (posts 9, 30-33)",
    ),
    "mlp_gan": ModelSpec(
        "gan", "zoo.gan.configs.mlp_gan", "zoo.gan.task", "mnist_5k",
        "the author's MLP WGAN with his one-sided unsquared gradient penalty, 5 critic steps (post 20)",
    ),
    "unilm_title": ModelSpec(
        "seq2seq", "zoo.seq2seq.configs.unilm_title", "zoo.seq2seq.task", "poetry_quatrains",
        "UniLM: one Transformer under the seq2seq mask, poem body -> title, cached source (post 6933)",
    ),
    "lstm_title": ModelSpec(
        "seq2seq", "zoo.seq2seq.configs.lstm_title", "zoo.seq2seq.task", "poetry_quatrains",
        "the author's 2018 BiLSTM/LSTM seq2seq with the bag-of-characters prior, body -> title (post 5861)",
    ),
    "poem_lm": ModelSpec(
        "seq2seq", "zoo.seq2seq.configs.poem_lm", "zoo.seq2seq.task", "poetry_quatrains",
        "causal Transformer LM over 5-character quatrains, KV-cached decoding (posts 6933, 7500)",
    ),
    "vae": ModelSpec(
        "vae", "zoo.vae.configs.vae", "zoo.vae.task", "mnist_5k",
        "VAE 784-256-2-256-784, Bernoulli (post 5253); variants conv, cvae (the author's simplest CVAE), iwae, gaussian, fashion (posts 5343, 5383)",
    ),
    "nvae": ModelSpec(
        "vae", "zoo.vae.configs.nvae", "zoo.vae.nvae_task", "fashion_mnist",
        "NVAE at 28x28: residual posterior over two scales of latent groups, SE residual cells, spectral and BN regularisers, KL warm-up and balancing, BN re-estimation (post 7574); variants binary, mnist",
    ),
    "poem_vae": ModelSpec(
        "vae", "zoo.vae.configs.poem_vae", "zoo.vae.poem", "poetry_couplets",
        "the author's CNN+VAE poem generator: gated convolutions, non-autoregressive 10-character couplets (post 5332)",
    ),
}  # fmt: skip

DEFAULT_MODEL = "crf_ner"


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def get_task(config, workdir):
    """The family's task for ``config``, with a weight EMA when ``train.ema_decay`` is set
    (:mod:`zoo.core.ema`)."""
    from zoo.core import ema

    task = importlib.import_module(spec(config.model_name).task).get_task(config, workdir)
    return ema.apply_config(task, config.train)


def restore_run(run_dir):
    """``(config, task, variables, step)`` of a run directory's latest checkpoint, for the
    families whose ``get_task`` is all a run needs (capsules, flows, GANs); ``variables``
    is what ``task.evaluate`` takes (the params, unless the task says otherwise)."""
    from pathlib import Path

    import jax

    from zoo.core import parallel
    from zoo.core.checkpoint import Checkpointer
    from zoo.core.config import read_config
    from zoo.core.train import eval_variables, init_state

    run_dir = Path(run_dir)
    config = read_config(run_dir / "config.json")
    checkpointer = Checkpointer(run_dir / "checkpoints")
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint")
    task = get_task(config, run_dir)
    state = checkpointer.restore(init_state(task, jax.random.key(0), parallel.data_mesh(1)))
    checkpointer.close()
    return config, task, eval_variables(task, state), int(state.step)
