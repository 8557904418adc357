"""Poem generation tasks on the committed 5-character quatrains (:mod:`zoo.data.poetry`).

Three models, one task module (``config.model.kind``):

* ``unilm`` (``zoo train unilm_title``): title generation with one Transformer under the UniLM
  mask (post 6933). Tokens ``[START] body [END] title [END]`` (26 source + up to 13 target
  positions, right-padded to ``2 + 24 + MAX_TITLE + 1``), segment ids 0 on the source and 1 on
  the target, loss on the target tokens only. Every body has 24 characters, so sources need
  no padding and the decoders' prompt is the 26 source tokens, cached once
  (:func:`zoo.transformer.unilm_prefill`).
* ``lstm`` (``zoo train lstm_title``): the same titles with the author's 2018 LSTM seq2seq and
  its bag-of-characters prior (post 5861, :mod:`zoo.seq2seq.lstm`); source = the 24 body
  characters, target ``[START] title`` → ``title [END]``.
* titles: as in the corpus by default; ``data.title_series = "strip"`` drops their series
  numbering (``偈頌一百二十三首其一二`` → ``偈頌``): a poem's number in its series is not in its body.
* ``lm`` (``zoo train poem_lm``): a causal Transformer LM over ``[START] body [END]``. Held-out
  task: given ``[START]`` and the first line's first half (``XXXXX，``), generate the other
  18 characters (and ``[END]``).

**Evaluation** on the held-out split (``data.test_limit`` poems; 0 = all 656): the
teacher-forced loss per target token, then for each decoder in ``eval.decoders`` — ``greedy``,
``beam`` (``eval.beam_size``, no length penalty, the best beam) and ``top_p`` (nucleus
sampling with ``eval.top_p``, temperature 1, fixed key ``eval.seed``) — character corpus
BLEU-4 and BLEU-2 and ROUGE-L F1 (:mod:`zoo.seq2seq.metrics`) against the reference title /
continuation, and for ``lm`` the fraction of continuations that complete a strict quatrain
(``format``). All decoders emit at least one character (``min_length = 1``). The first
``eval.num_samples`` test poems with every decoder's output go to ``<workdir>/samples.txt``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zoo.core.train import Task
from zoo.data import poetry
from zoo.data.batching import shuffled_batches
from zoo.data.poetry import END, PAD, START
from zoo.seq2seq import decoding, lstm
from zoo.seq2seq.metrics import corpus_bleu, rouge_l
from zoo.transformer import TransformerLM, make_cached_logits_fn, unilm_prefill
from zoo.transformer.model import cached_prefill
from zoo.transformer.objectives import lm_loss, token_cross_entropy, unilm_loss

KINDS = ("unilm", "lstm", "lm")
DECODERS = ("greedy", "beam", "top_p")
SOURCE_LEN = poetry.BODY_LENGTH + 2  # [START] body [END]
TITLE_LEN = poetry.MAX_TITLE + 1  # title [END]
LM_PROMPT_CHARS = 6  # "XXXXX，": the first half line and its comma
_QUATRAIN_REST = re.compile(r"^[\u4e00-\u9fff]{5}。[\u4e00-\u9fff]{5}，[\u4e00-\u9fff]{5}。$")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def build_vocab(config, train_poems) -> poetry.Vocab:
    return poetry.Vocab.build([p.title + p.body for p in train_poems], config.data.min_count)


def _pad_rows(rows, length):
    out = np.full((len(rows), length), PAD, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def encode_poems(kind: str, poems, vocab: poetry.Vocab) -> dict[str, np.ndarray]:
    """The arrays a training batch of ``kind`` holds (row ``i`` = poem ``i``)."""
    index = vocab.index()
    bodies = np.array([vocab.encode(p.body, index) for p in poems], np.int32).reshape(len(poems), poetry.BODY_LENGTH)
    titles = [vocab.encode(p.title, index) + [END] for p in poems]
    n = len(poems)
    if kind == "lm":
        return {"tokens": np.concatenate([np.full((n, 1), START), bodies, np.full((n, 1), END)], 1).astype(np.int32)}
    if kind == "lstm":
        return {
            "source": bodies,
            "target_in": _pad_rows([[START] + t[:-1] for t in titles], TITLE_LEN),
            "target_out": _pad_rows(titles, TITLE_LEN),
        }
    source = np.concatenate([np.full((n, 1), START), bodies, np.full((n, 1), END)], 1)
    tokens = np.concatenate([source, _pad_rows(titles, TITLE_LEN)], 1).astype(np.int32)
    segments = (np.arange(tokens.shape[1]) >= SOURCE_LEN).astype(np.int32)
    return {
        "tokens": tokens,
        "segment_ids": np.broadcast_to(segments, tokens.shape).copy(),
        "valid": tokens != PAD,
    }


# --------------------------------------------------------------------------- #
# Models and losses
# --------------------------------------------------------------------------- #


def make_model(config, vocab_size: int):
    m = config.model
    if m.kind in ("unilm", "lm"):
        max_len = SOURCE_LEN + (TITLE_LEN if m.kind == "unilm" else 0)
        return TransformerLM(vocab_size, m.num_layers, m.num_heads, m.head_dim, m.mlp_dim, max_len)
    if m.kind == "lstm":
        return lstm.LSTMSeq2Seq(
            vocab_size, embed_dim=m.embed_dim, encoder_units=m.encoder_units, decoder_units=m.decoder_units,
            hidden_dim=m.hidden_dim, use_prior=m.use_prior,
        )  # fmt: skip
    raise ValueError(f"config.model.kind must be one of {KINDS}; got {m.kind!r}")


def loss_and_count(kind, model, params, batch):
    """Mean cross-entropy per target token and the number of target tokens."""
    variables = {"params": params}
    if kind == "unilm":
        return unilm_loss(model, variables, batch["tokens"], batch["segment_ids"], batch["valid"], SOURCE_LEN)
    if kind == "lm":
        return lm_loss(model, variables, batch["tokens"])
    logits = model.apply(variables, batch["source"], batch["target_in"])
    return token_cross_entropy(logits, batch["target_out"], batch["target_out"] != PAD)


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, max(1, o.warmup_steps), max(o.warmup_steps + 1, config.train.num_steps),
        end_value=o.learning_rate * o.final_fraction,
    )  # fmt: skip
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), optax.adam(schedule))


# --------------------------------------------------------------------------- #
# Decoding
# --------------------------------------------------------------------------- #


def prompt_and_reference(kind: str, arrays, poems):
    """``(prompt inputs, references)``: what the decoder is given per poem and the text it
    should produce (the title; for ``lm`` the 18 characters after the prompt)."""
    if kind == "lm":
        return {"prompt": arrays["tokens"][:, : 1 + LM_PROMPT_CHARS]}, [p.body[LM_PROMPT_CHARS:] for p in poems]
    if kind == "lstm":
        return {"source": arrays["source"]}, [p.title for p in poems]
    return {"prompt": arrays["tokens"][:, :SOURCE_LEN]}, [p.title for p in poems]


def make_generate(config, model):
    """``generate(params, inputs, key, decoder) -> tokens [B, P + N]`` (jitted per decoder)."""
    kind, e = config.model.kind, config.eval
    max_new = TITLE_LEN if kind != "lm" else poetry.BODY_LENGTH - LM_PROMPT_CHARS + 1

    def setup(params, inputs):
        variables = {"params": params}
        if kind == "lstm":
            source = inputs["source"]
            prompt = jnp.full((source.shape[0], 1), START, jnp.int32)
            return lstm.make_lstm_logits_fn(model, variables), prompt, lstm.lstm_prefill(model, variables, source, prompt)
        prompt = inputs["prompt"]
        cache = unilm_prefill(model, variables, prompt) if kind == "unilm" else cached_prefill(model, variables, prompt)
        return make_cached_logits_fn(model, variables), prompt, cache

    common = dict(max_new_tokens=max_new, eos_id=END, min_length=1, pad_id=PAD)

    @functools.partial(jax.jit, static_argnames="decoder")
    def generate(params, inputs, key, decoder):
        fn, prompt, cache = setup(params, inputs)
        if decoder == "greedy":
            return decoding.greedy(fn, prompt, cache=cache, **common).tokens
        if decoder == "beam":
            return decoding.beam_search(fn, prompt, beam_size=e.beam_size, cache=cache, **common).tokens[:, 0]
        return decoding.sample(fn, prompt, key, top_p=e.top_p, cache=cache, **common).tokens

    return generate, (1 if kind == "lstm" else (1 + LM_PROMPT_CHARS if kind == "lm" else SOURCE_LEN))


def _batches(inputs: dict, batch_size: int):
    """Fixed-size chunks (the last padded by repeating its first row) and their true sizes."""
    n = len(next(iter(inputs.values())))
    for i in range(0, n, batch_size):
        chunk = {k: v[i : i + batch_size] for k, v in inputs.items()}
        size = len(next(iter(chunk.values())))
        if size < batch_size:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], batch_size - size, 0)]) for k, v in chunk.items()}
        yield chunk, size


def decode_texts(config, model, params, vocab, inputs, decoder: str, generate=None) -> list[str]:
    generate, prompt_len = generate or make_generate(config, model)
    texts = []
    for b, (chunk, size) in enumerate(_batches(inputs, config.eval.batch_size)):
        key = jax.random.fold_in(jax.random.key(config.eval.seed), b)
        tokens = np.asarray(generate(params, chunk, key, decoder))[:size, prompt_len:]
        texts.extend(vocab.decode(t) for t in tokens)
    return texts


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #


def evaluate_poems(config, model, params, vocab, poems, workdir=None) -> dict[str, float]:
    kind = config.model.kind
    arrays = encode_poems(kind, poems, vocab)
    loss_fn = _jitted_loss(kind, model)
    total = count = 0.0
    for chunk, size in _batches(arrays, config.eval.batch_size):
        trimmed = {k: v[:size] for k, v in chunk.items()}
        loss, n = loss_fn(params, trimmed)
        total, count = total + float(loss) * float(n), count + float(n)
    metrics = {"test_loss": total / max(count, 1.0)}
    metrics["test_perplexity"] = float(np.exp(metrics["test_loss"]))
    inputs, references = prompt_and_reference(kind, arrays, poems)
    generate = make_generate(config, model)
    outputs = {}
    for decoder in _check_decoders(config):
        texts = decode_texts(config, model, params, vocab, inputs, decoder, generate)
        outputs[decoder] = texts
        metrics[f"{decoder}_bleu4"] = corpus_bleu(texts, references, 4)
        metrics[f"{decoder}_bleu2"] = corpus_bleu(texts, references, 2)
        metrics[f"{decoder}_rouge_l"] = rouge_l(texts, references)
        if kind == "lm":
            metrics[f"{decoder}_format"] = float(np.mean([bool(_QUATRAIN_REST.match(t)) for t in texts]))
    if workdir is not None:
        write_samples(Path(workdir) / "samples.txt", kind, poems, references, outputs, config.eval.num_samples)
    return metrics


def write_samples(path: Path, kind, poems, references, outputs, num: int) -> None:
    lines = []
    for i, poem in enumerate(poems[:num]):
        given = poem.body if kind != "lm" else poem.body[:LM_PROMPT_CHARS]
        lines.append(f"[{i}] given: {given}")
        lines.append(f"    reference: {references[i]}")
        lines.extend(f"    {d}: {texts[i]}" for d, texts in outputs.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _check_decoders(config):
    for decoder in config.eval.decoders:
        if decoder not in DECODERS:
            raise ValueError(f"config.eval.decoders: each must be one of {DECODERS}; got {decoder!r}")
    return tuple(config.eval.decoders)


@functools.lru_cache(maxsize=8)
def _jitted_loss(kind, model):
    return jax.jit(functools.partial(loss_and_count, kind, model))


# --------------------------------------------------------------------------- #
# Task
# --------------------------------------------------------------------------- #


_NUMERAL = "[一二三四五六七八九十百千兩〇]"
_SERIES = re.compile(f"({_NUMERAL}+首)?(其?{_NUMERAL}+)?$")


def strip_series_number(title: str) -> str:
    """``"偈頌一百二十三首其一二"`` → ``"偈頌"``, ``"詠燭二首一"`` → ``"詠燭"``: a trailing
    "N首", "其M" or "M" (Chinese numerals) names the poem's place in a series, which the body
    cannot tell; a title that would become empty is kept whole."""
    return _SERIES.sub("", title) or title


def load_data(config):
    """``(train poems, test poems, vocab)``; with ``data.title_series = "strip"`` the titles
    lose their series numbering (:func:`strip_series_number`), with ``"keep"`` they do not."""
    d = config.data
    title_series = d.get("title_series", "keep")  # run directories from before the option: "keep"
    if title_series not in ("strip", "keep"):
        raise ValueError(f"config.data.title_series must be 'strip' or 'keep'; got {title_series!r}")
    train = poetry.load_split("train", d.train_limit)
    test = poetry.load_split("test", d.test_limit)
    if title_series == "strip":
        train, test = ([poetry.Poem(strip_series_number(p.title), p.body) for p in ps] for ps in (train, test))
    return train, test, build_vocab(config, train)


def get_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    kind, d = config.model.kind, config.data
    if kind not in KINDS:
        raise ValueError(f"config.model.kind must be one of {KINDS}; got {kind!r}")
    _check_decoders(config)  # before training, not after it
    train_poems, test_poems, vocab = load_data(config)
    model = make_model(config, vocab.size)
    arrays = encode_poems(kind, train_poems, vocab)
    n = len(train_poems)
    steps_per_epoch = n // d.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size {d.batch_size} exceeds the {n} training poems")

    def init(key):
        example = {k: jnp.asarray(v[:1]) for k, v in arrays.items()}
        if kind == "lstm":
            return model.init(key, example["source"], example["target_in"])["params"]
        return model.init(key, example["tokens"])["params"]

    def loss_fn(params, batch, key):
        del key  # no dropout or sampling in training
        loss, count = loss_and_count(kind, model, params, batch)
        return loss, {"target_tokens": count}

    def train_batches(start_step):
        for _, idx in shuffled_batches(n, d.batch_size, config.seed, start_step):
            yield {k: v[idx] for k, v in arrays.items()}

    def evaluate(params):
        return evaluate_poems(config, model, params, vocab, test_poems, workdir)

    return Task(init, make_optimizer(config), loss_fn, train_batches, evaluate)
