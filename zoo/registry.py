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
}  # fmt: skip

DEFAULT_MODEL = "crf_ner"


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def get_task(config, workdir):
    return importlib.import_module(spec(config.model_name).task).get_task(config, workdir)
