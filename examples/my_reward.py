"""An example of a custom reward: the mean brightness of the image.

Any function with the reward signature can be named as `reward.name` by its import path; it is
imported when the config is checked and called in batches of `reward.batch_size`:

    python run_select.py --config config/tiny.py --config.reward.name examples.my_reward:brightness

A reward that needs a model should load it once per process (e.g. under functools.cache),
not on every call. It can also be a component of a weighted reward:
`--config.reward.name weighted --config.reward.components "colour_match:1.0,examples.my_reward:brightness:0.1"`.
"""

import numpy as np


def brightness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Mean pixel value / 255, in [0, 1], for uint8 images [N, H, W, 3]; float [N]. Prompts are ignored."""
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
