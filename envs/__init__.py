"""Gymnasium environments (installed as falcon_rl.envs; docs/ARCHITECTURE.md).

Registered ids (``gymnasium.make(id, config=cfg_or_yaml_path, data=..., overrides=[...])``):

- ``falcon_rl/NegativeMining-v0`` — q per member, ``Box(0, 1, (|M|,))``;
- ``falcon_rl/NegativeMiningDiscrete-v0`` — K levels per member, ``MultiDiscrete([K] * |M|)``.

The env class and wrappers are imported lazily, so ``falcon_rl.envs.spaces`` stays light.
"""

from __future__ import annotations

from typing import Any

import gymnasium

ENV_ID = "falcon_rl/NegativeMining-v0"
DISCRETE_ENV_ID = "falcon_rl/NegativeMiningDiscrete-v0"


def make_discrete(config: Any = None, overrides: list[str] | None = None, **kwargs: Any) -> Any:
    """The discrete-levels variant (``experimental.action=discrete``) of :class:`NegativeMiningEnv`."""
    from falcon_rl.envs.negative_mining import NegativeMiningEnv

    return NegativeMiningEnv(config, overrides=list(overrides or []) + ["experimental.action=discrete"], **kwargs)


def _register() -> None:
    registry = gymnasium.envs.registration.registry
    if ENV_ID not in registry:
        gymnasium.register(id=ENV_ID, entry_point="falcon_rl.envs.negative_mining:NegativeMiningEnv")
    if DISCRETE_ENV_ID not in registry:
        gymnasium.register(id=DISCRETE_ENV_ID, entry_point="falcon_rl.envs:make_discrete")


_register()

_LAZY = {
    "NegativeMiningEnv": "falcon_rl.envs.negative_mining",
    "apply_overrides": "falcon_rl.envs.negative_mining",
    "SymmetricActions": "falcon_rl.envs.wrappers",
    "RetrievalEval": "falcon_rl.envs.wrappers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'falcon_rl.envs' has no attribute {name!r}")


__all__ = ["DISCRETE_ENV_ID", "ENV_ID", "NegativeMiningEnv", "RetrievalEval", "SymmetricActions",
           "apply_overrides", "make_discrete"]
