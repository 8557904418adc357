"""The poem tasks: batch layouts, and each model trains and decodes from its smoke config."""

import numpy as np
import pytest

from zoo.core import load_config, train_and_evaluate
from zoo.data import poetry
from zoo.data.poetry import END, PAD, START
from zoo.seq2seq import task as T


@pytest.fixture(scope="module")
def poems_and_vocab():
    poems = poetry.load_split("train", 20)
    return poems, poetry.Vocab.build([p.title + p.body for p in poems])


def test_unilm_layout(poems_and_vocab):
    poems, vocab = poems_and_vocab
    a = T.encode_poems("unilm", poems, vocab)
    assert a["tokens"].shape == (20, T.SOURCE_LEN + T.TITLE_LEN)
    for i, p in enumerate(poems):
        row = a["tokens"][i]
        assert row[0] == START and row[T.SOURCE_LEN - 1] == END
        assert vocab.decode(row[1 : T.SOURCE_LEN - 1]) == p.body
        title = row[T.SOURCE_LEN :]
        assert vocab.decode(title) == p.title and title[len(p.title)] == END
        assert np.all(title[len(p.title) + 1 :] == PAD)
        np.testing.assert_array_equal(a["valid"][i], row != PAD)
    assert np.all(a["segment_ids"][:, : T.SOURCE_LEN] == 0) and np.all(a["segment_ids"][:, T.SOURCE_LEN :] == 1)


def test_lstm_and_lm_layouts(poems_and_vocab):
    poems, vocab = poems_and_vocab
    s = T.encode_poems("lstm", poems, vocab)
    lm = T.encode_poems("lm", poems, vocab)
    for i, p in enumerate(poems):
        assert vocab.decode(s["source"][i]) == p.body
        assert s["target_in"][i, 0] == START
        np.testing.assert_array_equal(s["target_in"][i, 1 : len(p.title) + 1], s["target_out"][i, : len(p.title)])
        assert s["target_out"][i, len(p.title)] == END
        assert lm["tokens"][i, 0] == START and lm["tokens"][i, -1] == END
        assert vocab.decode(lm["tokens"][i]) == p.body
    inputs, refs = T.prompt_and_reference("lm", lm, poems)
    assert inputs["prompt"].shape == (20, 1 + T.LM_PROMPT_CHARS)
    assert refs[0] == poems[0].body[T.LM_PROMPT_CHARS :] and len(refs[0]) == 18


# unilm_title and poem_lm train and decode with every decoder in notebooks/seq2seq_masks.ipynb
# (executed by CI); tests/transformer/test_unilm.py checks their decoding paths exactly.
@pytest.mark.parametrize("name", ["lstm_title"])
def test_smoke_training_decodes_with_every_decoder(tmp_path, name):
    config = load_config(f"zoo.seq2seq.configs.{name}:smoke")
    config.data.update(train_limit=64, test_limit=10)
    config.eval.update(batch_size=8)
    config.train.update(num_steps=3, log_every=3, ckpt_every=3, progress=False)
    _, metrics = train_and_evaluate(config, tmp_path)
    assert np.isfinite(metrics["test_loss"])
    for d in T.DECODERS:
        for m in ("bleu4", "bleu2", "rouge_l"):
            assert 0.0 <= metrics[f"{d}_{m}"] <= 1.0
    samples = (tmp_path / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("reference:") == config.eval.num_samples
    assert all(f"    {d}: " in samples for d in T.DECODERS)


def test_strip_series_number():
    assert T.strip_series_number("偈頌一百二十三首其一二") == "偈頌"
    assert T.strip_series_number("詠燭二首一") == "詠燭"
    assert T.strip_series_number("相和歌辭王昭君三首三") == "相和歌辭王昭君"
    assert T.strip_series_number("句其一") == "句"
    assert T.strip_series_number("十五夜望月") == "十五夜望月"  # numerals inside the title stay
    assert T.strip_series_number("九日") == "九日"
    assert T.strip_series_number("十五") == "十五"  # would be empty: kept whole


def test_bad_config_is_refused_before_training(tmp_path):
    config = load_config("zoo.seq2seq.configs.poem_lm:smoke")
    config.eval.update(decoders=("greedy", "nucleus"))
    with pytest.raises(ValueError, match="config.eval.decoders"):
        T.get_task(config, tmp_path)
    config = load_config("zoo.seq2seq.configs.poem_lm:smoke")
    config.data.title_series = "drop"
    with pytest.raises(ValueError, match="title_series must be"):
        T.get_task(config, tmp_path)
    config = load_config("zoo.seq2seq.configs.poem_lm:smoke")
    config.model.kind = "gru"
    with pytest.raises(ValueError, match="config.model.kind must be one of"):
        T.get_task(config, tmp_path)
