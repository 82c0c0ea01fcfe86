"""MAFA's connection mining in the trainer: the frozen filter model and the per-batch planner
(``model.false_negatives: mafa``; the ``mafa`` config section; docs/ALGORITHM.md §11).

The filter (``mafa.filter``) is one of

* ``pretrain`` / ``path`` — a frozen copy of a trainer checkpoint (``<mafa.filter_dir>/checkpoint.pt``
  of the filter trained first by :func:`falcon_rl.training.filter_stage.ensure_filter`, or
  ``mafa.path``), rebuilt from the checkpoint's own model config. This is the paper's setup:
  MAFA's ``Pretrain_MAFA.py`` loads a separately trained filter (``--filter_checkpoint``), puts it
  in eval mode and sets ``requires_grad = False`` on every parameter;
* ``momentum`` — the online model's EMA towers (``model.momentum: true``) with its ITM head
  (ALBEF only: BLIP-2 has no momentum model);
* ``snapshot`` — a copy of the online towers and ITM head (BLIP-2: of the Q-Former and its
  heads, sharing the frozen image encoder) taken at first use and again whenever it is
  ``experimental.snapshot_every`` optimiser steps old.

The filter is any framework's ITM through :class:`falcon_rl.models.protocol.FilterModel`; a
checkpoint filter is rebuilt with its own ``model.framework``.

The filter always scores under ``no_grad`` in eval mode; its decisions are discrete, so no
gradient can reach it, and a ``pretrain`` / ``path`` / ``snapshot`` filter has no parameter
that requires a gradient and none in the optimiser.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from falcon_rl.config import ConfigError, ExperimentConfig
from falcon_rl.config.experimental import old_layout, replace_section
from falcon_rl.config.loader import build_old_section
from falcon_rl.config.model import ModelConfig
from falcon_rl.data.base import Batch
from falcon_rl.models import VLPModel, build_model
from falcon_rl.models.mafa import ConnectionReport, mine_connections
from falcon_rl.models.masking import MLMMasks
from falcon_rl.models.pair_plan import PairPlan, PairPlanner
from falcon_rl.models.protocol import FilterModel
from falcon_rl.models.towers import resolve_attention
from falcon_rl.torch_io import CheckpointError, load_payload

#: ``draw_masks(input_ids, attention_mask) -> MLMMasks`` (CPU tensors of the rows to mask)
MaskDrawer = Callable[[torch.Tensor, torch.Tensor], MLMMasks]

#: buffers of ALBEF's momentum queues (not part of a filter)
_QUEUE_BUFFERS = ("image_queue", "text_queue", "idx_queue", "queue_ptr")


def filter_checkpoint_path(cfg: ExperimentConfig) -> Path:
    """The checkpoint a ``pretrain`` or ``path`` filter is read from; a :class:`ConfigError` naming
    the key when it is not set."""
    m = cfg.mafa
    if m.filter == "path":
        if not m.path:
            raise ConfigError("mafa.filter=path needs mafa.path (a trainer checkpoint, e.g. the checkpoint.pt "
                              "that falcon-rl pretrain writes)")
        return Path(m.path).expanduser()
    if m.filter != "pretrain":
        raise ValueError(f"mafa.filter={m.filter!r} has no checkpoint")
    if not m.filter_dir:
        raise ConfigError("mafa.filter=pretrain needs mafa.filter_dir (train-agent and ablate set it and train the "
                          "filter there first; elsewhere use mafa.filter=path with mafa.path)")
    return Path(m.filter_dir).expanduser() / "checkpoint.pt"


def load_filter_model(path: str | Path, tokenizer, image_size: int, device: torch.device) -> VLPModel:
    """A frozen model (eval mode, no parameter requiring a gradient) from a trainer checkpoint,
    built with the checkpoint's own model config (its framework, without a momentum copy): an
    ALBEF filter may serve a BLIP-2 run and vice versa."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAFA filter checkpoint {path} does not exist (train it first, e.g. falcon-rl "
                                "pretrain, or let train-agent / ablate train it with mafa.filter=pretrain)")
    payload = load_payload(path)
    try:
        saved = old_layout(payload["config"])["model"]  # its moved keys (shapes) back under model
        state = payload["model"]
        signature = payload["signature"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"MAFA filter checkpoint {path}: not a falcon-rl trainer checkpoint "
                              f"(missing {e})") from e
    model_cfg = build_old_section(ModelConfig, "model", dict(saved), f"MAFA filter checkpoint {path}")
    model_cfg = replace_section(model_cfg, momentum=False, false_negatives="none")  # keeps its experimental keys
    for key, mine in (("vocab_size", len(tokenizer)), ("image_size", int(image_size))):
        if signature.get(key) != mine:
            raise CheckpointError(f"MAFA filter checkpoint {path}: {key} {signature.get(key)} differs from this "
                                  f"run's {mine}")
    model = build_model(model_cfg, tokenizer, image_size)
    weights = {k: v for k, v in state.items() if not k.startswith("enc_m.") and k not in _QUEUE_BUFFERS}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"MAFA filter checkpoint {path}: the weights do not fit its model config: "
                              f"{str(e).splitlines()[0]}") from e
    model.set_attention(resolve_attention(model_cfg.attention, device))
    return freeze(model.to(device))


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, every parameter ``requires_grad = False`` and no stored gradient."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None
    return module


class ConnectionMining:
    """The trainer's MAFA state: the filter and the planner of each training batch.

    The filter is a :class:`falcon_rl.models.protocol.FilterModel` (ALBEF's or BLIP-2's ITM, frozen).
    It is built when first used (the trainer uses it from
    :attr:`~falcon_rl.training.Trainer.connections_start` on: after the env's random-batch
    warm-up), so a warm-up never needs it; building it leaves the global RNGs untouched.
    A ``snapshot`` filter is taken at first use and again whenever it is ``experimental.snapshot_every``
    optimiser steps old. Config errors (a missing key, ``momentum`` without the EMA model, a
    ``path`` that does not exist) are raised at construction.

    :param cfg: the experiment config (``mafa`` section; ``model.momentum`` for ``momentum``).
    :param model: the online model (source of ``momentum`` and ``snapshot`` filters).
    :param tokenizer, image_size, device: to rebuild a checkpoint filter.
    """

    def __init__(self, cfg: ExperimentConfig, model: VLPModel, tokenizer, image_size: int,
                 device: torch.device) -> None:
        self.cfg = cfg.mafa
        self.kind = cfg.mafa.filter
        self.model = model
        self._build = (tokenizer, int(image_size), device)
        self.filter: FilterModel | None = None
        self.snapshot_step: int | None = None
        self.last_report: ConnectionReport | None = None
        self.path: Path | None = None
        if self.kind == "momentum":
            try:
                model.momentum_filter_view()
            except ValueError as e:
                raise ConfigError(str(e)) from e
        if self.kind in ("path", "pretrain"):
            self.path = filter_checkpoint_path(cfg)
            if self.kind == "path" and not self.path.is_file():
                raise FileNotFoundError(f"mafa.path: MAFA filter checkpoint {self.path} does not exist")

    def _snapshot(self) -> FilterModel:
        return freeze(self.model.frozen_copy())

    def filter_model(self, step: int = 0) -> FilterModel:
        """The filter as used at optimiser step ``step`` (built or refreshed here)."""
        if self.kind == "momentum":
            self.filter = self.model.momentum_filter_view()
        elif self.kind == "snapshot":
            if self.snapshot_step is None or step - self.snapshot_step >= self.cfg.snapshot_every:
                self.filter, self.snapshot_step = self._snapshot(), int(step)
        elif self.filter is None:
            tokenizer, image_size, device = self._build
            with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the run's RNG stream
                self.filter = load_filter_model(self.path, tokenizer, image_size, device).filter_view()
        assert self.filter is not None
        return self.filter

    def filter_parameters(self) -> list[torch.nn.Parameter]:
        """The filter's parameters (for ``momentum``: the EMA towers and the online ITM head)."""
        return list(self.filter_model(self.snapshot_step or 0).parameters())

    def planner(self, batch: Batch, step: int, draw_masks: MaskDrawer | None = None) -> PairPlanner:
        """The pair planner of one training batch at optimiser step ``step`` (on the model's
        device); it records its :class:`ConnectionReport` in :attr:`last_report`.

        :param draw_masks: ``draw_masks(input_ids, attention_mask)`` -> fresh MLM masks: the extra
            MLM samples get masks of their own, as MAFA masks its concatenated texts anew (ALBEF's
            MLM; None keeps the batch's masks of those texts).
        """
        score = self.filter_model(step).bind(batch.image, batch.input_ids, batch.attention_mask)
        m = self.cfg

        def plan(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, positives: torch.Tensor) -> PairPlan:
            out, self.last_report = mine_connections(sim_i2t, sim_t2i, positives, score, m.low, m.high, m.extra_mlm)
            if draw_masks is not None and out.mlm_text.numel():
                rows = out.mlm_text.cpu()
                out = dataclasses.replace(out, mlm_masks=draw_masks(batch.input_ids.cpu()[rows],
                                                                    batch.attention_mask.cpu()[rows]))
            return out

        return plan

    def take_report(self) -> ConnectionReport | None:
        """The last batch's report (and forget it)."""
        report, self.last_report = self.last_report, None
        return report

    def state_dict(self) -> dict[str, Any]:
        """A ``snapshot`` filter's weights and step (the others are rebuilt from config / model)."""
        if self.kind != "snapshot" or self.snapshot_step is None or self.filter is None:
            return {}
        return {"step": self.snapshot_step, "weights": self.filter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after the online model's weights were loaded); without a
        snapshot (none taken yet, or a checkpoint from a run without MAFA) it is taken at next use."""
        if self.kind != "snapshot":
            return
        if not state:
            self.filter, self.snapshot_step = None, None
            return
        filt = self._snapshot()
        filt.load_state_dict(state["weights"])
        self.filter = freeze(filt)
        self.snapshot_step = int(state["step"])
