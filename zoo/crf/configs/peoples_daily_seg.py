"""The author's word-segmentation demo (bojone/crf word_seg.py) on People's Daily 1998-01.

Embedding 128 → 3× Conv1D(128, k3, ReLU) → Dense(4) → CRF (transitions only), Adam,
batch 128, 10 epochs × 500 steps in the original (Bakeoff-2005 PKU data there).
    zoo train crf_seg
"""

from zoo.crf.configs.common import base_config, smoke


def get_config(arg: str = ""):
    c = base_config()
    c.model_name = "crf_seg"
    c.data.name = "peoples_daily_seg"
    c.data.batch_size = 128
    c.data.max_len = 256
    c.model.dilations = (1, 1, 1)
    c.train.num_steps = 5000
    if arg == "smoke":
        return smoke(c)
    if arg:
        raise ValueError(f"peoples_daily_seg config: unknown variant {arg!r}; use '' or 'smoke'")
    return c
