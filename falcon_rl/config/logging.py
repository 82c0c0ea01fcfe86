"""``logging`` section: TensorBoard and console output."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class LoggingConfig:
    """Where and how often to log."""

    tensorboard: bool = param(True, "write TensorBoard event files")
    log_every: int = param(1, "log scalars every N steps", ge=1)
    hist_every: int = param(5, "log q histograms every N env steps", ge=1)
    progress: bool = param(True, "show progress bars")
