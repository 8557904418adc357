"""UniLM title generation: one Transformer under the seq2seq mask (post 6933).

    zoo train unilm_title                 # 3 layers, d_model 256, 2,000 steps of 64 poems
    zoo train unilm_title --config smoke  # seconds
"""

from zoo.seq2seq.configs.common import get_config_for


def get_config(arg: str = ""):
    return get_config_for("unilm_title", "unilm", arg)
