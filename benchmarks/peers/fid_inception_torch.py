"""pytorch-fid's FID Inception v3 (the peer and the oracle of ``zoo.gan.inception``), with
random but well-scaled weights, since the real file is a download.

torchvision's PyPI wheels are CUDA builds whose compiled ops do not load next to the CPU
torch the peers pin, and ``import torchvision`` fails on registering them. The network
needs none of those ops, only ``torchvision.models.inception``; :func:`_import_pytorch_fid`
imports that module without running ``torchvision/__init__`` (a namespace stub carrying
the real package path).
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _import_pytorch_fid():
    """``(pytorch_fid.inception, torchvision.models.inception)``."""
    try:
        import torchvision  # noqa: F401  (works where torchvision matches torch)
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise ImportError("torchvision is not installed (bash scripts/setup.sh peers)") from None
        stub = types.ModuleType("torchvision")
        stub.__path__ = list(spec.submodule_search_locations)
        from importlib.metadata import version

        stub.__version__ = version("torchvision")
        sys.modules["torchvision"] = stub
        import torchvision.models.inception  # noqa: F401

        stub.models = sys.modules["torchvision.models"]
    import pytorch_fid.inception as pfi
    import torchvision.models.inception as tvi

    return pfi, tvi


def make_pytorch_fid_inception(seed: int = 0, calibration_side: int = 299):
    """pytorch-fid's ``InceptionV3([3])`` (eval mode) with random weights, and the full
    state dict (torch names, fc included) that :func:`zoo.gan.inception.variables_from_state_dict` reads.

    Random weights alone would make 94 stacked layers vanish or explode; BatchNorm's running
    statistics are therefore set to the batch statistics of one train-mode pass over random
    images (momentum 1), then scales and shifts are perturbed, so every layer sees
    unit-scale, non-trivial inputs.

    Returns:
      ``(model, fc, state_dict)``: the pool-feature network, the 1,008-way ``fc`` layer
      (``logits = fc(pool)``), and ``{key: torch tensor}``.
    """
    import torch

    pfi, tvi = _import_pytorch_fid()
    captured = {}
    original_build, original_load = pfi.fid_inception_v3, tvi.Inception3.load_state_dict
    original_download = pfi.load_state_dict_from_url

    def build_without_download():
        pfi.load_state_dict_from_url = lambda *a, **k: None
        tvi.Inception3.load_state_dict = lambda self, *a, **k: None
        try:
            captured["inception"] = original_build()
        finally:
            tvi.Inception3.load_state_dict = original_load
            pfi.load_state_dict_from_url = original_download
        return captured["inception"]

    torch.manual_seed(seed)
    pfi.fid_inception_v3 = build_without_download
    try:
        model = pfi.InceptionV3([3], resize_input=True, normalize_input=True)
    finally:
        pfi.fid_inception_v3 = original_build
    inception = captured["inception"]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in inception.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        model.train()
        model(torch.rand(8, 3, calibration_side, calibration_side, generator=generator))
        model.eval()
        for m in inception.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
        inception.fc.weight.copy_(torch.randn(inception.fc.weight.shape, generator=generator) * 2048**-0.5)
        inception.fc.bias.copy_(0.1 * torch.randn(inception.fc.bias.shape, generator=generator))
    return model, inception.fc, inception.state_dict()
