"""Character tagger: embedding → CNN stack or BiLSTM → dense emissions → linear-chain CRF.

The author's word-segmentation demo (kexue.fm/archives/5542, bojone/crf word_seg.py):
Embedding 128 → 3× Conv1D(128, k3, ReLU) → Dense(K) → CRF with transitions only (no
start/end scores), glorot-initialised. Options here add dilation, residual connections,
a BiLSTM encoder and start/end scores.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp


class TaggerOutput(NamedTuple):
    emissions: jnp.ndarray  # [B, T, K]
    transitions: jnp.ndarray  # [K, K]
    start: jnp.ndarray | None  # [K]
    end: jnp.ndarray | None  # [K]


class ConvEncoder(nn.Module):
    """Stack of same-padded 1-D convolutions; padded positions are zeroed after every layer
    so outputs inside a sequence do not depend on how much padding follows it."""

    features: int
    kernel_size: int
    dilations: tuple[int, ...]
    residual: bool
    dropout: float

    @nn.compact
    def __call__(self, x, mask, *, train):  # x [B, T, D], mask [B, T, 1]
        for i, rate in enumerate(self.dilations):
            y = nn.Conv(self.features, (self.kernel_size,), kernel_dilation=(rate,), padding="SAME", name=f"conv{i}")(x)
            y = nn.relu(y)
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
            x = (x + y if self.residual and x.shape[-1] == self.features else y) * mask
        return x


class BiLSTMEncoder(nn.Module):
    features: int  # per direction
    num_layers: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, lengths, *, train):
        for i in range(self.num_layers):
            x = nn.Bidirectional(
                nn.RNN(nn.OptimizedLSTMCell(self.features)),
                nn.RNN(nn.OptimizedLSTMCell(self.features)),
                name=f"bilstm{i}",
            )(x, seq_lengths=lengths)
            x = nn.Dropout(self.dropout, deterministic=not train)(x) * mask
        return x


class Tagger(nn.Module):
    """``Tagger(...)(tokens[B, T], lengths[B], train=...) -> TaggerOutput``."""

    vocab_size: int
    num_tags: int
    embed_dim: int = 128
    encoder: str = "cnn"  # "cnn" | "bilstm"
    features: int = 128
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 1, 1)
    residual: bool = False
    lstm_layers: int = 1
    dropout: float = 0.0
    use_start_end: bool = False

    @nn.compact
    def __call__(self, tokens, lengths, *, train: bool = False) -> TaggerOutput:
        if tokens.ndim != 2 or jnp.shape(lengths) != tokens.shape[:1]:
            raise ValueError(f"Tagger: `tokens` must be [B, T] and `lengths` [B] = {tokens.shape[:1]}; "
                             f"got tokens {tokens.shape}, lengths {jnp.shape(lengths)}")
        mask = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None])[..., None]
        x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens) * mask
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.encoder == "cnn":
            x = ConvEncoder(self.features, self.kernel_size, tuple(self.dilations), self.residual, self.dropout, name="encoder")(x, mask, train=train)
        elif self.encoder == "bilstm":
            x = BiLSTMEncoder(self.features, self.lstm_layers, self.dropout, name="encoder")(x, mask, lengths, train=train)
        else:
            raise ValueError(f"Tagger.encoder must be 'cnn' or 'bilstm'; got {self.encoder!r}")
        emissions = nn.Dense(self.num_tags, name="emissions")(x)
        k = self.num_tags
        # The CRF's parameters live under "crf" so the optimizer can give them their own
        # learning rate (the author's lr multiplier).
        transitions = self.param("crf_transitions", nn.initializers.glorot_uniform(), (k, k))
        start = end = None
        if self.use_start_end:
            start = self.param("crf_start", nn.initializers.zeros, (k,))
            end = self.param("crf_end", nn.initializers.zeros, (k,))
        return TaggerOutput(emissions.astype(jnp.float32), transitions, start, end)
