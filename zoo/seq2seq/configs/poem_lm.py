"""A causal Transformer LM over 5-character quatrains; evaluated by continuing the first
half line of each held-out poem.

    zoo train poem_lm
    zoo train poem_lm --config smoke
"""

from zoo.seq2seq.configs.common import get_config_for


def get_config(arg: str = ""):
    return get_config_for("poem_lm", "lm", arg)
