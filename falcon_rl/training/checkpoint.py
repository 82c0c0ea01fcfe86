"""Checkpoint helpers, under the names the training layer and its callers have always used.

They live below the training layer, so that data splits and models can use them without
importing upward (docs/ARCHITECTURE.md, layers): RNG state capture / restore in
:mod:`falcon_rl.rng`, ``weights_only``-safe torch files (:func:`to_safe`, :func:`atomic_save`,
:func:`load_torch_file`, :func:`load_payload`, :class:`CheckpointError`) in
:mod:`falcon_rl.torch_io`. This module re-exports them for the env and the schedulers.
"""

from __future__ import annotations

from falcon_rl.rng import global_rng_state, numpy_generator_state, set_global_rng_state, set_numpy_generator_state
from falcon_rl.torch_io import CheckpointError, atomic_save, load_payload, load_torch_file, to_safe

__all__ = ["CheckpointError", "atomic_save", "global_rng_state", "load_payload", "load_torch_file",
           "numpy_generator_state", "set_global_rng_state", "set_numpy_generator_state", "to_safe"]
