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
    progress: bool | str = param(
        "auto", "progress display: auto = tqdm bars when stderr is a terminal, plain lines every "
        "progress_interval s when it is not, nothing when the environment variable CI is set; "
        "true = bars always; false = nothing", choices=["auto", True, False])
    progress_interval: float = param(30.0, "plain progress lines (stderr not a terminal): seconds between lines",
                                     gt=0.0)
