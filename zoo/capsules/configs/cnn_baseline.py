"""The author's CNN baseline (post 4819): the capsule model's backbone + global average
pooling + Dense 128 + Dense 10 sigmoid, same loss, data and two-digit test.

    zoo train cnn_baseline
"""

from zoo.capsules.configs.common import check_variant, smoke
from zoo.capsules.configs.su_capsule import mnist5k_config


def get_config(arg: str = ""):
    check_variant("cnn_baseline", arg)
    c = mnist5k_config()
    c.model_name = "cnn_baseline"
    c.model.kind = "cnn_baseline"
    return smoke(c) if arg == "smoke" else c
