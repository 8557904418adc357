"""Character CNN-CRF NER on MSRA (PER/LOC/ORG, BMES tags).

Default (CPU, 2 cores, documented in the README):
    zoo train crf_ner
Variants: ``smoke`` (seconds), ``bilstm`` (BiLSTM encoder, for a GPU).
"""

from zoo.crf.configs.common import base_config, smoke


def get_config(arg: str = ""):
    c = base_config()
    c.model_name = "crf_ner"
    c.data.name = "msra_ner"
    c.model.embed_dim = 128
    c.model.features = 192
    c.model.dilations = (1, 2, 4, 1, 2, 4)
    c.model.residual = True
    c.model.dropout = 0.2
    c.model.constrain_start_end = False  # 6 train / 11 test sentences start inside an entity
    c.optim.learning_rate = 2e-3
    c.train.num_steps = 5000
    c.train.eval_every = 1000
    if arg == "smoke":
        return smoke(c)
    if arg == "bilstm":
        c.model.encoder = "bilstm"
        c.model.features = 256
        c.model.lstm_layers = 2
        c.train.num_steps = 12000
        return c
    if arg:
        raise ValueError(f"msra_ner config: unknown variant {arg!r}; use '', 'smoke' or 'bilstm'")
    return c
