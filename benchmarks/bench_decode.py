"""Greedy decoding with a KV cache against recomputing the whole buffer each step (post 6933).

A random :class:`zoo.transformer.TransformerLM` (default vocab 1000, 4 layers, 4 heads ×
32, MLP 512) decodes ``--new`` tokens after a ``--prompt``-token prompt for ``--batch`` rows
with :func:`zoo.seq2seq.greedy` under ``jax.jit``, ``min_length = --new`` so no row stops
early. Two step functions:

* ``cached``: :func:`zoo.transformer.make_cached_logits_fn` plus
  :func:`zoo.transformer.cached_prefill` (the prefill is inside the timed, jitted call);
* ``recompute``: :func:`zoo.transformer.make_recompute_logits_fn` (the full causal pass over
  the ``prompt + new`` buffer every step, as the author decodes).

Both must produce the same tokens (checked). Timing: one warm-up call (compilation), then
the median of ``--repeats`` calls. Throughput = ``batch × new / median``.

Run: ``python -m benchmarks.bench_decode [--repeats N] [--batch B] [--prompt P] [--new N]``.
Writes ``benchmarks/results/decode-<platform>.jsonl`` and ``.md`` (overwritten each run).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from zoo.seq2seq import greedy
from zoo.transformer import TransformerLM, cached_prefill, make_cached_logits_fn, make_recompute_logits_fn

RESULTS_DIR = harness.RESULTS_DIR


def build(args):
    model = TransformerLM(vocab_size=args.vocab, num_layers=args.layers, num_heads=args.heads,
                          head_dim=args.head_dim, mlp_dim=args.mlp, max_len=args.prompt + args.new)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, args.prompt + args.new), jnp.int32))
    prompt = jnp.asarray(np.random.default_rng(0).integers(1, args.vocab, (args.batch, args.prompt)), jnp.int32)
    kw = dict(max_new_tokens=args.new, eos_id=0, min_length=args.new)
    cached = jax.jit(lambda p: greedy(make_cached_logits_fn(model, params), p,
                                      cache=cached_prefill(model, params, p), **kw).tokens)
    recompute = jax.jit(lambda p: greedy(make_recompute_logits_fn(model, params), p, **kw).tokens)
    return prompt, {"cached": cached, "recompute": recompute}


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_decode", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--mlp", type=int, default=512)
    ap.add_argument("--no-write", action="store_true", help="print only, write no result files")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    env = harness.environment()
    prompt, fns = build(args)
    records, outputs = [], {}
    for name, fn in fns.items():
        t = harness.time_callable(lambda: jax.block_until_ready(fn(prompt)), warmup=1, repeats=args.repeats)
        outputs[name] = np.asarray(t.pop("output"))
        tps = args.batch * args.new / (t["median_ms"] / 1e3)
        records.append({"section": "decode", "step_fn": name, "batch": args.batch, "prompt": args.prompt,
                        "new": args.new, **t, "tokens_per_s": tps})
        print(f"{name:10s} median {t['median_ms']:9.1f} ms  {tps:10.1f} tokens/s", flush=True)
    same = bool(np.array_equal(outputs["cached"], outputs["recompute"]))
    ratio = records[1]["median_ms"] / records[0]["median_ms"]
    for r in records:
        r["same_tokens"] = same
        r["speedup_vs_recompute"] = records[1]["median_ms"] / r["median_ms"]
    print(f"cached / recompute speed-up: {ratio:.2f}x; identical tokens: {same}")
    env["load_avg_1m_end"] = harness.load_average()
    if not args.no_write:
        stem = RESULTS_DIR / f"decode-{env['platform']}"
        harness.write_jsonl(stem.with_suffix(".jsonl"), [{**r, "env": env} for r in records])
        cols = ["step_fn", "batch", "prompt", "new", ("median_ms", "median ms"), ("p90_ms", "p90 ms"),
                ("tokens_per_s", "tokens/s"), ("speedup_vs_recompute", "speed-up"), ("same_tokens", "same tokens")]
        protocol = (f"jitted zoo.seq2seq.greedy, random TransformerLM(vocab {args.vocab}, {args.layers} layers, "
                    f"{args.heads} heads × {args.head_dim}, mlp {args.mlp}, max_len {args.prompt + args.new}), "
                    f"min_length = max_new_tokens (no early stop); 1 warm-up call, median of {args.repeats}")
        command = "python -m benchmarks.bench_decode " + shlex.join(sys.argv[1:] if argv is None else argv)
        md = harness.markdown_report("Greedy decoding: KV cache vs recompute", env, command.strip(),
                                     protocol, {"decode": ("Decode", cols)}, records,
                                     notes=["cached includes the prompt prefill inside the timed call"])
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.md")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
