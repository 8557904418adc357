"""Matrix capsules with EM routing (Hinton, Sabour, Frosst 2018), small: A=32, B=8,
C=D=16, 3 EM iterations, spread loss with the margin growing 0.2 → 0.9, on Fashion-MNIST.

    bash scripts/get_data.sh fashion_mnist && zoo train em_capsnet
smallNORB (tfds, needs network; 96×96 images resized to 32×32, 5 classes):
``zoo train em_capsnet --config smallnorb``.
"""

from zoo.capsules.configs.common import base_config, check_variant, smoke
from zoo.core.config import YNNPACK_DOTS_ONLY


def get_config(arg: str = ""):
    check_variant("em_capsnet", arg, ("", "smoke", "smallnorb"))
    c = base_config()
    c.model_name = "em_capsnet"
    c.model.kind = "em_capsnet"
    c.model.update(conv_features=32, primary_types=8, caps1_types=16, caps2_types=16, inverse_temperature=0.01)
    c.data.name = "fashion_mnist"
    c.data.batch_size = 64
    c.optim.learning_rate = 3e-3
    c.optim.decay_per_epoch = 0.96
    c.loss.margin_steps = 2000
    c.train.num_steps = 5000
    c.train.eval_every = 1000
    c.train.cpu_compiler_options = YNNPACK_DOTS_ONLY  # step 2.1 -> 1.3 s on the 2-core CPU
    if arg == "smallnorb":
        c.data.name = "tfds:smallnorb"
        c.data.resize = 32
        c.data.shift = 0
    if arg == "smoke":
        smoke(c)
        c.model.update(conv_features=8, primary_types=4, caps1_types=4, caps2_types=4)
        c.loss.margin_steps = 4
    return c
