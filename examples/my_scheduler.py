"""Your own negative-mining scheduler: hard negatives, softer where the top is crowded.

Run it next to GRIT and random, from the repository root:
    falcon-rl ablate --config examples/my_scheduler.yaml
"""
import numpy as np

from falcon_rl.agents import Scheduler


class CrowdAware(Scheduler):
    """q = 1 (GRIT's hardest negative) for an anchor whose hardest candidate stands out; softer
    when the next candidates score about as high (a crowded top, where false negatives sit)."""

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        cols = self.spec.columns                    # quantile00 (hardest) .. quantile15, progress
        top = obs[..., cols.index("quantile00")]    # softmax weight of the hardest candidate
        near = obs[..., cols.index("quantile02")]   # ... of the third hardest
        crowd = near / np.maximum(top, 1e-8)        # 1: crowded top, 0: one clear hardest
        return np.clip(1.0 - 0.5 * crowd, 0.0, 1.0)  # (n, |M|) hardness in [0, 1]
