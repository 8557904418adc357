"""The author's 2018 LSTM seq2seq title generator (post 5861): BiLSTM encoder, LSTM decoder,
bilinear attention /10 and the bag-of-characters prior; Adam 1e-3 as in the post.

    zoo train lstm_title
    zoo train lstm_title --config smoke
"""

from zoo.seq2seq.configs.common import get_config_for


def get_config(arg: str = ""):
    return get_config_for("lstm_title", "lstm", arg, optim=dict(learning_rate=1e-3))
