"""CapsNet (Sabour et al. 2017) on Fashion-MNIST: 3 routing iterations, margin loss,
reconstruction decoder (weight 0.0005), ±2-pixel shifts, Adam 1e-3 decayed ×0.9 per epoch.

    bash scripts/get_data.sh fashion_mnist && zoo train capsnet
Variants: ``smoke`` (seconds), ``gpu`` (the full 50-epoch schedule).
"""

from zoo.capsules.configs.common import base_config, check_variant, smoke
from zoo.core.config import YNNPACK_NO_REDUCE


def get_config(arg: str = ""):
    check_variant("capsnet", arg, ("", "smoke", "gpu"))
    c = base_config()
    c.model_name = "capsnet"
    c.data.name = "fashion_mnist"
    c.optim.decay_per_epoch = 0.9
    c.train.num_steps = 6000  # 10 epochs of 600 batches
    c.train.eval_every = 1200
    c.train.ckpt_every = 600
    # XLA:CPU runs the routing scans' reductions as its own loops (not YNNPACK's) over chunks
    # of 128 input capsules, and the convolutions' bias gradients as products with ones
    # (YNNPACK dots): step 453-463 -> 405-421 ms on the 2-core CPU (README, capsules).
    c.train.cpu_compiler_options = YNNPACK_NO_REDUCE
    c.model.update(routing_chunk=128, bias_grad_as_matmul=True)
    if arg == "gpu":
        c.train.num_steps = 30000  # 50 epochs
        c.train.eval_every = 3000
    if arg == "smoke":
        smoke(c)
        c.model.update(conv_features=16, primary_types=4, class_dim=8, decoder_features=(16, 32))
    return c
