"""The author's 2018 LSTM seq2seq title generator (post 5861, ``bojone/seq2seq``, first commit).

A character-level encoder-decoder that writes a news title from the article; the baseline
the UniLM Transformer (:mod:`zoo.transformer`) is compared against.

**Ids.** Characters are ids ``>= 4``; the four special ids are module constants:
``PAD = 0`` (padding / mask: a source or target position holding 0 is padding),
``UNK = 1`` (a character below the vocabulary's count threshold), ``START = 2`` (the
decoder's first input), ``END = 3`` (the last target token; decoding stops on it).
A training pair is ``source = article ids`` (right-padded with 0) and
``target = [START, title ids..., END]`` (right-padded with 0); the model reads
``target_in = target[:, :-1]`` and is scored by :func:`seq2seq_loss` against
``target_out = target[:, 1:]``.

**Model** (:class:`LSTMSeq2Seq`, defaults are the author's sizes):

* one ``Embed(vocab_size, embed_dim=128)`` shared by source and target;
* encoder: ``encoder_layers = 2`` stacked bidirectional LSTMs, ``encoder_units = 64`` per
  direction, outputs concatenated to ``2 * 64 = 128``. Padding is respected: the length of a
  source row is its number of non-pad ids (sources are **right-padded**, as the author's
  ``padding``; a 0 inside a row would be miscounted, exactly as in the author's
  ``reverse_sequence``), the backward LSTM starts at each row's true end
  (``nn.RNN(reverse=True, keep_order=True, seq_lengths=...)``), and outputs at pad positions are
  zeroed (the author's ``x * mask``). Appending pad columns never changes the outputs at real
  positions.
* decoder: ``decoder_layers = 2`` stacked LSTMs of ``decoder_units = 128``, zero initial
  carries, teacher forcing;
* "interact": single-head bilinear attention ``softmax_s(q W k_s / 10)`` of every decoder
  state ``q`` over the encoder outputs ``k`` (``W`` a bias-free ``Dense``; temperature
  ``attention_temperature = 10``), masked over source pads; then
  ``[attention output, decoder state, masked max-pool of the encoder outputs]``;
* ``Dense(hidden_dim = 512) → ReLU → Dense(vocab_size)`` gives the logits ``y``;
* **prior** (``use_prior=True``): ``χ [B, V]`` is the 0/1 bag of characters of the source
  (``χ_v = 1`` iff id ``v`` occurs in the article; the special ids 0-3 are excluded, so
  ``χ = 0`` there — the author's code excluded only the pad, i.e. it also counted ``UNK``).
  A per-vocabulary ScaleShift ``ŷ = exp(log_s) ⊙ χ + t`` (``log_s``, ``t``: ``[V]``, initialised
  at 0) is averaged with the logits, ``y ← (y + ŷ) / 2``, before the softmax: titles mostly
  copy characters of the article, and this lets the model learn that prior directly.

All activations are float32. With masking, an all-pad source gives pooled features 0 and an
attention output 0 (uniform weights over zeroed pad outputs), never NaN.

**Methods.** ``__call__(source [B, S], target_in [B, T]) -> logits [B, T, V]``;
``encode(source)`` → ``{"memory": [B, S, 2u], "source_mask": bool [B, S], "pooled": [B, 2u],
"bag": [B, V]}``; ``init_carry(batch)`` → zero decoder carries, a tuple per layer of
``(c, h)`` ``[B, decoder_units]`` (needs no parameters: ``model.init_carry(b)`` works on the
unbound module); ``decode(encoded, target_in, carry)`` → ``(logits [B, T, V], carry)``;
``decode_step(encoded, token_t [B], carry)`` → ``(logits [B, V], carry)`` (``decode`` with
``T = 1``, so stepping is exactly the teacher-forced pass).

**Decoder step functions** (``zoo.seq2seq.decoding`` convention
``logits_fn(tokens [B', L], step, cache) -> (logits [B', V], cache)``):

* :func:`make_lstm_logits_fn` feeds ``tokens[:, step]`` through ``decode_step``; the cache is
  ``{"encoded": encode(source), "carry": decoder carries}``, every leaf with a leading batch
  axis (beam search repeats them to ``B * K`` and gathers them by parent beam). Pass
  ``cache = lstm_prefill(model, params, source, prompt)`` (the encoded source and the carries
  after ``prompt[:, :P - 1]``; with the usual ``prompt = [[START]]``, ``P = 1``, the zero carries).
* :func:`make_lstm_recompute_logits_fn` reruns the teacher-forced model on the whole buffer
  every step (the author's O(n²) ``model.predict([xid, yid])`` loop) and passes the cache
  through (``cache=None``). It closes over ``source [B, S]``; with beam search the buffer has
  ``B * K`` rows (row ``b``, beam ``k`` at ``b * K + k``), so each source row is repeated
  ``tokens.shape[0] // B`` times (``jnp.repeat``, matching that layout).

Both give the same tokens under :func:`~zoo.seq2seq.greedy` / :func:`~zoo.seq2seq.beam_search`.
The author's ``gen_sent`` also never emits ids 0-2 (it slices ``proba[:, 3:]``); the decoders
here score the full vocabulary, so to mimic that mask those logits in a wrapping ``logits_fn``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error
from kernels.checks import token_ids as _check_ids

PAD = 0  #: padding / mask id (source and target)
UNK = 1  #: unknown (rare) character id
START = 2  #: decoder start id (first input token)
END = 3  #: end-of-title id (last target token; EOS for the decoders)
NUM_SPECIAL = 4  #: ids ``< NUM_SPECIAL`` are special and excluded from the bag of characters

_NEG = -1e30  # masked attention score (finite: an all-pad row gives uniform weights, not NaN)


def _check_batch(fn, name, got, want, against):
    if got != want:
        raise _error(fn, name, f"batch size {want} (that of {against})", f"batch size {got}")


def bag_of_characters(source, vocab_size: int):
    """``χ`` float32 ``[B, V]``: 1 where id ``v >= 4`` occurs in the source row, else 0."""
    b = source.shape[0]
    bag = jnp.zeros((b, vocab_size), jnp.float32).at[jnp.arange(b)[:, None], source].set(1.0)
    return bag * (jnp.arange(vocab_size) >= NUM_SPECIAL).astype(jnp.float32)


class LSTMSeq2Seq(nn.Module):
    """The 2018 title generator (module docstring). ``source``/``target`` ids: 0 = pad."""

    vocab_size: int
    embed_dim: int = 128
    encoder_units: int = 64  # per direction
    encoder_layers: int = 2
    decoder_units: int = 128
    decoder_layers: int = 2
    attention_temperature: float = 10.0
    hidden_dim: int = 512
    use_prior: bool = True

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim)
        self.enc_fwd = [nn.RNN(nn.OptimizedLSTMCell(self.encoder_units), name=f"enc_fwd_{i}")
                        for i in range(self.encoder_layers)]
        self.enc_bwd = [nn.RNN(nn.OptimizedLSTMCell(self.encoder_units), reverse=True, keep_order=True,
                               name=f"enc_bwd_{i}") for i in range(self.encoder_layers)]
        self.dec = [nn.RNN(nn.OptimizedLSTMCell(self.decoder_units), return_carry=True, name=f"dec_{i}")
                    for i in range(self.decoder_layers)]
        self.attn_w = nn.Dense(2 * self.encoder_units, use_bias=False)
        self.hidden = nn.Dense(self.hidden_dim)
        self.out = nn.Dense(self.vocab_size)
        if self.use_prior:
            self.log_scale = self.param("log_scale", nn.initializers.zeros, (self.vocab_size,), jnp.float32)
            self.shift = self.param("shift", nn.initializers.zeros, (self.vocab_size,), jnp.float32)

    # ------------------------------------------------------------------ encoder

    def encode(self, source):
        """``source [B, S]`` int (right-padded with 0) → dict of ``[B, ...]`` arrays (docstring)."""
        source = _check_ids("LSTMSeq2Seq.encode", "source", source, 2, self.vocab_size, "[B, S]")
        mask = source != PAD
        lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
        fmask = mask[..., None].astype(jnp.float32)
        x = self.embed(source)
        for fwd, bwd in zip(self.enc_fwd, self.enc_bwd):
            x = jnp.concatenate([fwd(x, seq_lengths=lengths), bwd(x, seq_lengths=lengths)], axis=-1)
            x = x * fmask
        pooled = jnp.max(jnp.where(mask[..., None], x, jnp.finfo(jnp.float32).min), axis=1)
        pooled = jnp.where(jnp.any(mask, axis=1, keepdims=True), pooled, 0.0)
        return {"memory": x, "source_mask": mask, "pooled": pooled,
                "bag": bag_of_characters(source, self.vocab_size)}

    # ------------------------------------------------------------------ decoder

    def init_carry(self, batch: int):
        """Zero decoder carries: a tuple per layer of ``(c, h)``, each float32 ``[batch, units]``."""
        z = jnp.zeros((batch, self.decoder_units), jnp.float32)
        return tuple((z, z) for _ in range(self.decoder_layers))

    def _interact(self, encoded, y):
        """Decoder states ``y [B, T, H]`` → logits ``[B, T, V]`` (attention, pool, MLP, prior)."""
        memory, mask = encoded["memory"], encoded["source_mask"]
        scores = jnp.einsum("btd,bsd->bts", self.attn_w(y), memory) / self.attention_temperature
        scores = jnp.where(mask[:, None, :], scores, _NEG)
        attn = jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores, axis=-1), memory)
        pooled = jnp.broadcast_to(encoded["pooled"][:, None, :], attn.shape[:2] + encoded["pooled"].shape[-1:])
        h = nn.relu(self.hidden(jnp.concatenate([attn, y, pooled], axis=-1)))
        logits = self.out(h)
        if self.use_prior:
            prior = jnp.exp(self.log_scale) * encoded["bag"] + self.shift  # [B, V]
            logits = (logits + prior[:, None, :]) / 2
        return logits.astype(jnp.float32)

    def decode(self, encoded, target_in, carry):
        """Teacher-forced decoder from ``carry``: ``target_in [B, T]`` → ``(logits [B, T, V], carry)``."""
        fn = "LSTMSeq2Seq.decode"
        target_in = _check_ids(fn, "target_in", target_in, 2, self.vocab_size, "[B, T]")
        _check_batch(fn, "target_in", target_in.shape[0], encoded["memory"].shape[0], "the encoded source")
        y = self.embed(target_in)
        new_carry = []
        for rnn, c in zip(self.dec, carry):
            c, y = rnn(y, initial_carry=tuple(c))
            new_carry.append(c)
        return self._interact(encoded, y), tuple(new_carry)

    def decode_step(self, encoded, token_t, carry):
        """One step: ``token_t [B]`` → ``(logits [B, V], carry)`` (``decode`` with ``T = 1``)."""
        token_t = _check_ids("LSTMSeq2Seq.decode_step", "token_t", token_t, 1, self.vocab_size, "[B]")
        logits, carry = self.decode(encoded, token_t[:, None], carry)
        return logits[:, 0], carry

    def __call__(self, source, target_in):
        """``source [B, S]``, ``target_in [B, T]`` (ints, 0 = pad) → float32 logits ``[B, T, V]``."""
        fn = "LSTMSeq2Seq"
        source = _check_ids(fn, "source", source, 2, self.vocab_size, "[B, S]")
        target_in = _check_ids(fn, "target_in", target_in, 2, self.vocab_size, "[B, T]")
        _check_batch(fn, "target_in", target_in.shape[0], source.shape[0], "source")
        encoded = self.encode(source)
        logits, _ = self.decode(encoded, target_in, self.init_carry(source.shape[0]))
        return logits


# --------------------------------------------------------------------------- #
# Loss
# --------------------------------------------------------------------------- #


def seq2seq_loss(logits, target_out):
    """Masked cross-entropy, mean over the non-pad targets.

    Args:
      logits: float ``[B, T, V]`` from ``model(source, target[:, :-1])``.
      target_out: int ``[B, T]`` = ``target[:, 1:]`` (the next tokens; 0 = pad, ignored).
    Returns:
      ``(loss, count)``: float32 ``Σ mask · (-log p(target)) / max(count, 1)`` and the int32
      number of non-pad targets ``count`` (so an all-pad batch gives loss 0).
    """
    fn = "seq2seq_loss"
    shape = jnp.shape(logits)
    if len(shape) != 3 or not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise _error(fn, "logits", "a float array [B, T, V] (rank 3)",
                     f"shape {tuple(shape)} dtype {jnp.result_type(logits)}")
    target_out = _check_ids(fn, "target_out", target_out, 2, shape[2], "[B, T]")
    if target_out.shape != shape[:2]:
        raise _error(fn, "target_out", f"shape [B, T] = {tuple(shape[:2])} (that of logits)",
                     f"shape {tuple(target_out.shape)}")
    logp = jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, target_out[..., None], axis=-1)[..., 0]
    mask = target_out != PAD
    count = jnp.sum(mask, dtype=jnp.int32)
    loss = jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)
    return loss, count


# --------------------------------------------------------------------------- #
# Decoder step functions
# --------------------------------------------------------------------------- #


def _check_buffer(fn, tokens):
    shape = jnp.shape(tokens)
    if len(shape) != 2 or not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise _error(fn, "tokens", "an integer array [B, L] (rank 2)",
                     f"shape {tuple(shape)} dtype {jnp.result_type(tokens)}")


def make_lstm_logits_fn(model: LSTMSeq2Seq, params):
    """Cached ``logits_fn``: feeds ``tokens[:, step]`` through ``decode_step``.

    Pass ``cache = lstm_prefill(model, params, source, prompt)`` to the decoders; the cache is
    ``{"encoded": ..., "carry": ...}`` and only ``"carry"`` changes from step to step.
    """

    def logits_fn(tokens, step, cache):
        _check_buffer("lstm logits_fn", tokens)
        tok = jax.lax.dynamic_index_in_dim(tokens, step, axis=1, keepdims=False)
        logits, carry = model.apply(params, cache["encoded"], tok, cache["carry"], method=LSTMSeq2Seq.decode_step)
        return logits, {"encoded": cache["encoded"], "carry": carry}

    return logits_fn


def lstm_prefill(model: LSTMSeq2Seq, params, source, prompt):
    """The cache before prompt position ``P - 1``: the encoded source and the decoder carries
    after ``prompt[:, :P - 1]`` (zero carries for the usual ``prompt = [[START]] * B``)."""
    fn = "lstm_prefill"
    source = _check_ids(fn, "source", source, 2, model.vocab_size, "[B, S]")
    prompt = _check_ids(fn, "prompt", prompt, 2, model.vocab_size, "[B, P]")
    if prompt.shape[1] < 1:
        raise _error(fn, "prompt", "[B, P] with P >= 1", f"shape {tuple(prompt.shape)}")
    _check_batch(fn, "prompt", prompt.shape[0], source.shape[0], "source")
    b, p = prompt.shape
    encoded = model.apply(params, source, method=LSTMSeq2Seq.encode)
    carry = model.init_carry(b)
    if p > 1:
        _, carry = model.apply(params, encoded, prompt[:, : p - 1], carry, method=LSTMSeq2Seq.decode)
    return {"encoded": encoded, "carry": carry}


def make_lstm_recompute_logits_fn(model: LSTMSeq2Seq, params, source):
    """``logits_fn`` that reruns ``model(source, tokens)`` on the whole buffer each step and
    returns the logits at ``step`` (the author's O(n²) decoding); pass ``cache=None``.

    ``source [B, S]`` is closed over. The buffer may have ``B' = r · B`` rows (beam search:
    ``r = beam_size``, row ``b`` beam ``k`` at ``b * r + k``); each source row is then repeated
    ``r = B' // B`` times with ``jnp.repeat``. ``B'`` not a multiple of ``B`` raises ``ValueError``.
    """
    fn = "make_lstm_recompute_logits_fn"
    source = _check_ids(fn, "source", source, 2, model.vocab_size, "[B, S]")

    def logits_fn(tokens, step, cache):
        _check_buffer("lstm recompute logits_fn", tokens)
        rows, b = tokens.shape[0], source.shape[0]
        if rows % b:
            raise _error("lstm recompute logits_fn", "tokens", f"a multiple of the source batch {b} rows",
                         f"{rows} rows")
        src = jnp.repeat(source, rows // b, axis=0) if rows != b else source
        logits = model.apply(params, src, tokens)
        return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), cache

    return logits_fn


__all__ = [
    "END",
    "LSTMSeq2Seq",
    "NUM_SPECIAL",
    "PAD",
    "START",
    "UNK",
    "bag_of_characters",
    "lstm_prefill",
    "make_lstm_logits_fn",
    "make_lstm_recompute_logits_fn",
    "seq2seq_loss",
]
