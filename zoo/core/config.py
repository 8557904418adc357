"""Configs are Python files with ``get_config(arg="") -> ConfigDict``; ``arg`` picks a variant.

A config is named as ``module.path[:arg]`` or ``path/to/file.py[:arg]``; command-line
overrides look like ``--config.train.num_steps=200`` and are parsed to the type of the
field they replace, so a typo or a wrong type fails loudly.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``module.path[:arg]`` or ``file.py[:arg]`` and calls its ``get_config(arg)``."""
    target, _, arg = spec.partition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"config file {target!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_zoo_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {target!r} defines no get_config(arg)")
    return module.get_config(arg)


def _parse_value(text: str, current):
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ValueError(f"expected a boolean (true/false); got {text!r}")
        return lowered in ("true", "1")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        value = ast.literal_eval(text)
        return type(current)(value if isinstance(value, (tuple, list)) else (value,))
    return ast.literal_eval(text)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``config.a.b=value`` strings (a leading ``--`` is optional) in order."""
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        if not sep or not key.startswith("config."):
            raise ValueError(f"override {item!r} must look like --config.section.field=value")
        *parents, leaf = key[len("config."):].split(".")
        node = config
        for name in parents:
            if name not in node:
                raise KeyError(f"override {item!r}: no config section {name!r}")
            node = node[name]
        if leaf not in node:
            raise KeyError(f"override {item!r}: no field {leaf!r}; valid: {sorted(node.keys())}")
        try:
            node[leaf] = _parse_value(text, node[leaf])
        except ValueError as err:
            raise ValueError(f"override {item!r}: {err}") from None
    return config


def save_config(config: ml_collections.ConfigDict, path: Path) -> None:
    path.write_text(config.to_json(indent=2, sort_keys=True))


def read_config(path: Path) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(Path(path).read_text()))


def check_variant(name: str, arg: str, known=("", "smoke")):
    """Raises a ValueError naming the config and its known variants for an unknown ``arg``."""
    if arg not in known:
        raise ValueError(f"{name} config: unknown variant {arg!r}; use one of {list(known)}")


# ``train.cpu_compiler_options`` for models whose CPU step is bound by reductions over big
# broadcast products (EM routing, NVAE's cells): XLA:CPU hands only dots to YNNPACK and
# fuses the reductions itself. YNNPACK's reduction fusions do not take in a broadcast, so
# XLA first wrote each broadcast operand out at full size. Measured on the 2-core CPU (ad
# hoc A/B, same process): EMCapsNet's step 2.1 -> 1.3 s, NVAE's 1.09 -> 0.96 s; CapsNet,
# Glow, RealNVP, DCGAN and the CRF got 15-50% slower, so it is not the default.
YNNPACK_DOTS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

# ``train.cpu_compiler_options`` for small MLP steps whose losses sum transcendental terms per
# example (the MLP VAE): jaxlib's default YNNPACK set is individual dots, individual
# convolutions and reductions, and a YNNPACK reduce fusion evaluates the elementwise ops
# fused into it slowly: on the 2-core CPU, a row sum of exp over [100, 784] took 0.39 ms
# that way against 0.04 ms for a plain row sum. This is
# ``--xla_cpu_experimental_ynn_fusion_type=-reduce`` as a per-jit option (which does not take
# the "-" form). ``zoo bench xla_options`` (benchmarks/results/xla-options-cpu.md): the MLP
# VAE's step 1.02-1.31x faster, the conv VAE's 1.05x; NICE, RealNVP, Glow and the MLP GAN
# 2-9% and the CRF 20% slower, CapsNet 26% slower, the rest level. So it is set per config.
YNNPACK_NO_REDUCE = {
    "xla_cpu_experimental_ynn_fusion_type": ",".join(
        ["LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"]
    )
}


def train_defaults(num_steps: int, log_every: int, ckpt_every: int) -> dict:
    """The ``train`` section every family's config has (``zoo.core.train`` reads it):
    ``eval_every=0`` (only at the end), all local devices, a progress bar, no NaN injection,
    no extra XLA options for the train step on CPU (``cpu_compiler_options``, see
    :func:`zoo.core.train.cpu_compiler_options`), and no weight EMA (``ema_decay``, see
    :mod:`zoo.core.ema`)."""
    return dict(
        num_steps=num_steps, log_every=log_every, eval_every=0, ckpt_every=ckpt_every, num_devices=0, progress=True,
        inject_nan_at_step=-1, cpu_compiler_options={}, ema_decay=0.0,
    )
