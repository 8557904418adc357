"""A small pre-LayerNorm Transformer LM whose behaviour is set by the attention mask (posts 6933, 4765).

**Model.** ``TransformerLM(vocab_size, num_layers, num_heads, head_dim, mlp_dim, max_len)``:
token embedding (``d_model = num_heads * head_dim``) plus fixed sinusoidal positions, then
``num_layers`` pre-LN blocks ``x + MHA(LN(x))``, ``x + MLP(LN(x))`` (MLP: Dense ``mlp_dim``,
gelu, Dense ``d_model``), a final LayerNorm and an **untied** output projection (Dense with
bias) to ``vocab_size`` logits.

* Positions: the author's layout (post 4765), **concatenated** ``[cos | sin]`` (not
  interleaved) with frequencies ``1 / 10000^(2i / d_model)``, ``i < d_model / 2``; added to
  the token embedding. ``d_model`` must be even.
* Attention: separate q, k, v projections ``[d_model] -> [H, D]`` (with bias) and an output
  projection, computed by :func:`kernels.attention.masked_attention` (``impl="xla"``).
  ``scale_attention=False`` passes ``scale=1.0``: the author's 2018 layer before 1/sqrt(d)
  was added.
* ``__call__(tokens [B, T], mask=None) -> logits [B, T, V]`` with any boolean mask
  broadcastable to ``[B, 1, T, T]``: :func:`~kernels.attention.causal_mask` (LM),
  :func:`~kernels.attention.unilm_mask` (seq2seq), :func:`~kernels.attention.permutation_mask`
  (permutation LM); ``None`` = full bidirectional attention. ``T > max_len`` raises
  ``ValueError`` (shapes are static, so this is checked at trace time too).

**KV cache.** ``cache = {"k": (k_0, ..., k_{L-1}), "v": (v_0, ...)}``: a *tuple per layer*
(not a stacked array) of ``[B, max_len, H, D]`` float32 arrays, so every leaf has a leading
batch axis as :func:`zoo.seq2seq.beam_search` requires. :meth:`TransformerLM.init_cache` gives
zeros; :meth:`TransformerLM.decode_step` ``(tokens_t [B], position, cache)`` writes the new key
and value at ``position`` with ``lax.dynamic_update_slice`` and attends to the keys at
positions ``<= position`` (a mask from a position iota, so one compilation serves every
step); :meth:`TransformerLM.prefill` ``(tokens [B, P])`` runs the full causal pass and returns
``(logits, cache)`` with positions ``< P`` filled (``>= P`` zero). The cache is only valid for
the causal (LM) mask. A traced ``position >= max_len`` cannot be checked: XLA clamps the
update index, so the result is silently wrong; the helpers below check the buffer length
against ``max_len`` statically.

**Decoder step functions** (``zoo.seq2seq.decoding`` convention
``logits_fn(tokens [B, L], step, cache) -> (logits [B, V], cache)``):

* :func:`make_recompute_logits_fn`: ignores the cache (pass ``cache=None``) and reruns the
  whole buffer with the causal mask each step, O(L²) per step, as the author decodes.
* :func:`make_cached_logits_fn`: feeds ``tokens[:, step]`` at ``position = step`` through
  ``decode_step``; pass ``cache = cached_prefill(model, params, prompt)``, the cache after
  ``prompt[:, :P - 1]`` (the decoders' first call has ``step = P - 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from kernels.attention import causal_mask, combine_masks, masked_attention, unilm_mask
from kernels.checks import concrete as _concrete


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
    """``[max_len, d_model]`` float32: ``[cos(p·ω_i) | sin(p·ω_i)]``, ``ω_i = 10000^(-2i/d)``."""
    if d_model % 2:
        raise ValueError(f"sinusoidal_positions: d_model must be even; got {d_model}")
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    omega = 1.0 / 10000.0 ** (2.0 * np.arange(d_model // 2, dtype=np.float64) / d_model)
    angles = pos * omega[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


class Block(nn.Module):
    """Pre-LN Transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    scale_attention: bool = True
    use_bias: bool = True

    def setup(self):
        hd = (self.num_heads, self.head_dim)
        self.ln_attn = nn.LayerNorm(epsilon=1e-6)
        self.query = nn.DenseGeneral(hd, use_bias=self.use_bias)
        self.key = nn.DenseGeneral(hd, use_bias=self.use_bias)
        self.value = nn.DenseGeneral(hd, use_bias=self.use_bias)
        self.out = nn.DenseGeneral(self.num_heads * self.head_dim, axis=(-2, -1), use_bias=self.use_bias)
        self.ln_mlp = nn.LayerNorm(epsilon=1e-6)
        self.mlp_in = nn.Dense(self.mlp_dim)
        self.mlp_out = nn.Dense(self.num_heads * self.head_dim)

    def _scale(self):
        return None if self.scale_attention else 1.0  # None = 1/sqrt(head_dim)

    def _mlp(self, x):
        return x + self.mlp_out(nn.gelu(self.mlp_in(self.ln_mlp(x))))

    def __call__(self, x, mask=None, return_kv=False):
        """``x [B, T, d] -> [B, T, d]`` (and ``(k, v)`` each ``[B, T, H, D]`` when ``return_kv``)."""
        h = self.ln_attn(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        att = masked_attention(q, k, v, mask=mask, scale=self._scale(), impl="xla")
        y = self._mlp(x + self.out(att))
        return (y, (k, v)) if return_kv else y

    def step(self, x, position, k_cache, v_cache, key_valid=None):
        """One token: ``x [B, 1, d]`` at ``position``; caches ``[B, max_len, H, D]``;
        ``key_valid [B, max_len]`` bool, optional: cached keys that may be attended to."""
        h = self.ln_attn(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, position, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, position, 0, 0))
        visible = (jnp.arange(k_cache.shape[1]) <= position)[None, None, None, :]  # [1, 1, 1, max_len]
        if key_valid is not None:
            visible = visible & key_valid[:, None, None, :]
        att = masked_attention(q, k_cache, v_cache, mask=visible, scale=self._scale(), impl="xla")
        return self._mlp(x + self.out(att)), k_cache, v_cache


class TransformerLM(nn.Module):
    """Decoder-style Transformer whose mask decides LM / UniLM seq2seq / permutation LM.

    See the module docstring for the architecture, position layout and cache layout.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    max_len: int
    scale_attention: bool = True
    use_bias: bool = True

    @property
    def d_model(self) -> int:
        return self.num_heads * self.head_dim

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.d_model)
        self.blocks = [
            Block(self.num_heads, self.head_dim, self.mlp_dim, self.scale_attention, self.use_bias, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.ln_final = nn.LayerNorm(epsilon=1e-6)
        self.head = nn.Dense(self.vocab_size)

    def _positions(self):
        return jnp.asarray(sinusoidal_positions(self.max_len, self.d_model))

    def _check_len(self, fn, t):
        if t > self.max_len:
            raise ValueError(f"TransformerLM.{fn}: sequence length {t} exceeds max_len = {self.max_len}")

    def _embed(self, tokens, positions=None):
        if positions is None:
            return self.embed(tokens) + self._positions()[None, : tokens.shape[1]]
        return self.embed(tokens) + jnp.take(self._positions(), positions, axis=0)

    def _logits(self, x):
        return self.head(self.ln_final(x))

    def __call__(self, tokens, mask=None, positions=None, logits_from: int = 0):
        """``tokens [B, T]`` int, ``mask`` bool broadcastable to ``[B, 1, T, T]`` -> ``[B, T, V]``.

        ``positions [B, T]`` int (default ``arange(T)``): the position id of each token, for
        the permutation LM written as shuffled tokens *with their positions* under the causal
        mask (post 6933); values must lie in ``[0, max_len)`` (not checked under jit).
        ``logits_from`` (static int): project only positions ``>= logits_from`` to the
        vocabulary, returning ``[B, T - logits_from, V]`` (UniLM trains the target only, so
        the source positions need no output layer).
        """
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"TransformerLM: tokens must be [B, T]; got shape {jnp.shape(tokens)}")
        self._check_len("__call__", tokens.shape[1])
        if positions is not None and jnp.shape(positions) != jnp.shape(tokens):
            raise ValueError(f"TransformerLM: positions must have the shape of tokens {jnp.shape(tokens)}; "
                             f"got {jnp.shape(positions)}")
        if not 0 <= logits_from < tokens.shape[1]:
            raise ValueError(f"TransformerLM: logits_from must be in [0, T) = [0, {tokens.shape[1]}); got {logits_from}")
        if positions is not None:
            vals = _concrete(positions)
            if vals is not None and vals.size and (vals.min() < 0 or vals.max() >= self.max_len):
                # jnp.take would give NaN (fill mode) past the table, a wrap-around below 0
                raise ValueError(f"TransformerLM: positions must lie in [0, max_len) = [0, {self.max_len}); "
                                 f"got values in [{vals.min()}, {vals.max()}]")
        x = self._embed(tokens, positions)
        for block in self.blocks:
            x = block(x, mask)
        return self._logits(x[:, logits_from:])

    def prefill(self, tokens):
        """Causal pass over ``tokens [B, P]``: ``(logits [B, P, V], cache)``, cache filled at ``< P``."""
        b, p = tokens.shape
        self._check_len("prefill", p)
        x = self._embed(tokens)
        mask = causal_mask(p)
        ks, vs = [], []
        pad = ((0, 0), (0, self.max_len - p), (0, 0), (0, 0))
        for block in self.blocks:
            x, (k, v) = block(x, mask, return_kv=True)
            ks.append(jnp.pad(k.astype(jnp.float32), pad))
            vs.append(jnp.pad(v.astype(jnp.float32), pad))
        return self._logits(x), {"k": tuple(ks), "v": tuple(vs)}

    def prefill_source(self, tokens, key_valid=None):
        """UniLM source pass: ``tokens [B, S]`` attend **bidirectionally** to the valid source
        keys (``key_valid [B, S]`` bool, default all). Returns ``(logits [B, S, V], cache)``:
        keys and values at positions ``< S``, and ``cache["valid"] [B, max_len]`` = the source
        validity, ``True`` at every position ``>= S`` (where the target will be written)."""
        b, s = tokens.shape
        self._check_len("prefill_source", s)
        valid = jnp.ones((b, s), bool) if key_valid is None else jnp.asarray(key_valid, bool)
        x = self._embed(tokens)
        mask = valid[:, None, None, :]
        ks, vs = [], []
        pad = ((0, 0), (0, self.max_len - s), (0, 0), (0, 0))
        for block in self.blocks:
            x, (k, v) = block(x, mask, return_kv=True)
            ks.append(jnp.pad(k.astype(jnp.float32), pad))
            vs.append(jnp.pad(v.astype(jnp.float32), pad))
        full_valid = jnp.pad(valid, ((0, 0), (0, self.max_len - s)), constant_values=True)
        return self._logits(x), {"k": tuple(ks), "v": tuple(vs), "valid": full_valid}

    def decode_step(self, tokens_t, position, cache):
        """``tokens_t [B]`` at ``position`` (int32 scalar, may be traced) -> ``(logits [B, V], cache)``.

        A cache from :meth:`prefill_source` carries ``"valid"`` (UniLM: padded source keys stay
        invisible); one from :meth:`init_cache` / :meth:`prefill` does not."""
        x = self.embed(tokens_t)[:, None, :] + self._positions()[position][None, None, :]
        valid = cache.get("valid")
        ks, vs = [], []
        for block, kc, vc in zip(self.blocks, cache["k"], cache["v"]):
            x, kc, vc = block.step(x, position, kc, vc, valid)
            ks.append(kc)
            vs.append(vc)
        new = {"k": tuple(ks), "v": tuple(vs)}
        if valid is not None:
            new["valid"] = valid
        return self._logits(x)[:, 0], new

    def init_cache(self, batch: int, dtype=jnp.float32):
        """Zero cache: ``{"k": L × [batch, max_len, H, D], "v": same}`` (needs no params)."""
        z = lambda: jnp.zeros((batch, self.max_len, self.num_heads, self.head_dim), dtype)  # noqa: E731
        return {"k": tuple(z() for _ in range(self.num_layers)), "v": tuple(z() for _ in range(self.num_layers))}


# --------------------------------------------------------------------------- #
# Decoder step functions (zoo.seq2seq.decoding interface)
# --------------------------------------------------------------------------- #


def _check_buffer(model, fn, tokens):
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"{fn}: tokens must be [B, L]; got shape {jnp.shape(tokens)}")
    if tokens.shape[1] > model.max_len:
        raise ValueError(f"{fn}: token buffer length {tokens.shape[1]} (prompt + max_new_tokens) "
                         f"exceeds max_len = {model.max_len}")


def make_recompute_logits_fn(model: TransformerLM, params):
    """``logits_fn`` that reruns the whole buffer under the causal mask; the cache passes through."""

    def logits_fn(tokens, step, cache):
        _check_buffer(model, "recompute logits_fn", tokens)
        logits = model.apply(params, tokens, causal_mask(tokens.shape[1]))
        return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), cache

    return logits_fn


def make_cached_logits_fn(model: TransformerLM, params):
    """``logits_fn`` that feeds ``tokens[:, step]`` at ``position = step`` through the KV cache."""

    def logits_fn(tokens, step, cache):
        _check_buffer(model, "cached logits_fn", tokens)
        tok = jax.lax.dynamic_index_in_dim(tokens, step, axis=1, keepdims=False)
        return model.apply(params, tok, step, cache, method=TransformerLM.decode_step)

    return logits_fn


def cached_prefill(model: TransformerLM, params, prompt):
    """The cache after ``prompt[:, :P - 1]`` (what the decoders expect with the cached logits_fn)."""
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"cached_prefill: prompt must be [B, P] with P >= 1; got shape {prompt.shape}")
    b, p = prompt.shape
    if p > model.max_len:
        raise ValueError(f"cached_prefill: prompt length {p} exceeds max_len = {model.max_len}")
    if p == 1:
        return model.init_cache(b)
    _, cache = model.apply(params, prompt[:, : p - 1], method=TransformerLM.prefill)
    return cache


# --------------------------------------------------------------------------- #
# UniLM seq2seq decoding: the bidirectional source is cached once
# --------------------------------------------------------------------------- #


def _check_left_padded(fn, key_valid):
    """Concrete ``key_valid [B, S]`` must mark a left-padded source: ``False…False True…True``
    with the last position real (its query predicts the first target token)."""
    vals = _concrete(key_valid) if key_valid is not None else None
    if vals is None or not vals.size:
        return
    vals = vals.astype(bool)
    bad = ~vals[:, -1] | (np.diff(vals.astype(np.int8), axis=1) < 0).any(axis=1)
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise ValueError(f"{fn}: key_valid must mark a left-padded source (False…False True…True, last position "
                         f"True); got row {row} = {vals[row].astype(int).tolist()}")


def unilm_prefill(model: TransformerLM, params, source, key_valid=None):
    """The decoders' cache for a UniLM prompt ``source [B, S]`` (``[CLS] src [SEP]``, segment 0).

    Runs :meth:`TransformerLM.prefill_source` over the **whole** source, so every source key
    and value is the bidirectional one the model was trained with. The decoders' first call
    (``step = S - 1``) feeds ``source[:, S - 1]`` again; its query sees exactly the valid
    source keys, the same set as in the bidirectional pass, so it rewrites slot ``S - 1``
    with the values already there and returns the first target token's logits. Use with
    :func:`make_cached_logits_fn`. Every cache leaf (``k``, ``v``, ``valid``) has the leading
    batch axis :func:`zoo.seq2seq.beam_search` repeats.

    ``key_valid [B, S]`` marks real source tokens; pad sources on the **left** so that
    ``[SEP]`` (the query for the first target token) sits at ``S - 1`` in every row, and train
    with the same layout.
    """
    source = jnp.asarray(source, jnp.int32)
    if source.ndim != 2 or source.shape[1] < 1:
        raise ValueError(f"unilm_prefill: source must be [B, S] with S >= 1; got shape {source.shape}")
    if source.shape[1] > model.max_len:
        raise ValueError(f"unilm_prefill: source length {source.shape[1]} exceeds max_len = {model.max_len}")
    if key_valid is not None and jnp.shape(key_valid) != source.shape:
        raise ValueError(f"unilm_prefill: key_valid must have the shape of source {source.shape}; "
                         f"got {jnp.shape(key_valid)}")
    _check_left_padded("unilm_prefill", key_valid)
    _, cache = model.apply(params, source, key_valid, method=TransformerLM.prefill_source)
    return cache


def make_unilm_recompute_logits_fn(model: TransformerLM, params, source_length: int, key_valid=None):
    """``logits_fn`` that reruns the whole buffer under the UniLM mask each step (the author's
    O(L²) decoding): positions ``< source_length`` are segment 0, the rest segment 1.
    ``key_valid [B, source_length]`` as in :func:`unilm_prefill` (rows are repeated when the
    decoder's batch is a multiple of ``B``, as beam search's ``B * K`` is)."""
    if key_valid is not None:
        if jnp.ndim(key_valid) != 2 or jnp.shape(key_valid)[1] != source_length:
            raise ValueError(f"make_unilm_recompute_logits_fn: key_valid must be [B, source_length = {source_length}]; "
                             f"got shape {jnp.shape(key_valid)}")
        _check_left_padded("make_unilm_recompute_logits_fn", key_valid)
    def logits_fn(tokens, step, cache):
        _check_buffer(model, "unilm recompute logits_fn", tokens)
        rows, length = tokens.shape
        segments = (jnp.arange(length) >= source_length).astype(jnp.int32)
        mask = unilm_mask(jnp.broadcast_to(segments, (rows, length)))
        if key_valid is not None:
            valid = jnp.asarray(key_valid, bool)
            if rows % valid.shape[0]:
                raise ValueError(f"unilm recompute logits_fn: the decoder's batch {rows} must be a multiple of "
                                 f"key_valid's {valid.shape[0]} rows")
            valid = jnp.repeat(valid, rows // valid.shape[0], axis=0)
            valid = jnp.pad(valid, ((0, 0), (0, length - source_length)), constant_values=True)
            mask = combine_masks(mask, valid[:, None, None, :])
        logits = model.apply(params, tokens, mask)
        return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), cache

    return logits_fn
