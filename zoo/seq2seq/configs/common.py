"""Defaults shared by the poem configs (``zoo.seq2seq.task``)."""

import ml_collections

from zoo.core.config import check_variant, train_defaults  # noqa: F401  (re-exported for the config files)


def base_config(model_name: str, kind: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = model_name
    c.seed = 0
    # title_series: "strip" drops a title's series numbering (偈頌一百二十三首其一二 -> 偈頌), "keep" does not
    c.data = dict(name="poetry_quatrains", batch_size=64, min_count=2, train_limit=0, test_limit=0, title_series="keep")
    c.model = dict(
        kind=kind,
        # Transformer (unilm, lm): d_model = num_heads * head_dim
        num_layers=3, num_heads=4, head_dim=64, mlp_dim=512,
        # LSTM seq2seq (post 5861): embedding, units per encoder direction, decoder units, dense
        embed_dim=128, encoder_units=64, decoder_units=128, hidden_dim=512, use_prior=True,
    )  # fmt: skip
    c.optim = dict(learning_rate=5e-4, warmup_steps=200, final_fraction=0.1, grad_clip=1.0)
    c.eval = dict(decoders=("greedy", "beam", "top_p"), beam_size=3, top_p=0.9, seed=1, batch_size=128, num_samples=12)
    c.train = train_defaults(num_steps=2000, log_every=100, ckpt_every=500)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds on CPU: a slice of the data, a narrow model, a handful of steps."""
    c.data.update(batch_size=8, train_limit=200, test_limit=24)
    c.model.update(num_layers=1, num_heads=2, head_dim=8, mlp_dim=32, embed_dim=16, encoder_units=8,
                   decoder_units=16, hidden_dim=32)
    c.optim.update(warmup_steps=2)
    c.eval.update(batch_size=16, num_samples=4)
    c.train.update(num_steps=4, log_every=2, ckpt_every=2)
    return c


def get_config_for(model_name: str, kind: str, arg: str, **overrides):
    check_variant(model_name, arg)
    c = base_config(model_name, kind)
    for section, values in overrides.items():
        c[section].update(values)
    return smoke(c) if arg == "smoke" else c
