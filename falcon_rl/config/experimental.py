"""``experimental`` section: knobs for experiments and benchmark construction, not settings a user needs.

They are kept so that the published tables reproduce (docs/results/): the built-in benchmarks'
generator internals, model shapes over the preset, and the variants of mining, env, agent, MAFA and
reward-check that the ablations compare. Each key keeps the name it had in its old section
(:data:`MOVED_FROM`); a config naming the old place is refused with the new one
(:func:`falcon_rl.config.loader.load_config`). Code that holds only a section (``cfg.data``, an
``AgentConfig``) still reads its moved keys as attributes of that section: they read the
``experimental`` section of the config the section belongs to (:func:`section_view`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from falcon_rl.config import rewards
from falcon_rl.config.fields import param
from falcon_rl.config.moved_keys import MOVED_FROM, SB3_RENAMED  # noqa: F401 - re-exported, the one table

#: the banner ``falcon-rl config --docs`` prints above this section
BANNER = ("# experimental: knobs for experiments and benchmark construction, not settings a user needs; "
          "kept so the published tables (docs/results/) reproduce")


@dataclass
class ExperimentalConfig:
    """Knobs for experiments and benchmark construction (each documented with the section it came from)."""

    # --- from data: built-in benchmark generators (data.source synthetic_scenes / digits_scenes; docs/ALGORITHM.md §9) ---
    grid: int = param(2, "objects sit in distinct cells of a grid x grid layout", ge=1)
    min_objects: int = param(1, "fewest objects per image", ge=1)
    max_objects: int = param(3, "most objects per image (<= grid*grid)", ge=1)
    n_colors: int = param(8, "number of colours used", ge=1, le=8)
    n_shapes: int = param(4, "number of shapes used", ge=1, le=4)
    n_sizes: int = param(2, "number of sizes used", ge=1, le=2)
    color_jitter: float = param(0.06, "per-object RGB jitter (fraction of 255)", ge=0.0, le=0.5)
    fact_probs: list[float] = param(
        [0.05, 0.08, 0.15, 0.18, 0.18, 0.16, 0.10, 0.10],
        "P(caption states F facts) for F = 1..len; renormalised", each_ge=0.0)
    max_facts_per_object: int = param(4, "cap on facts stated about one object", ge=1)
    fact_kind_weights: list[float] = param(
        [2.0, 1.5, 1.0, 1.0], "relative odds of stating an object's colour, shape, size, position", each_ge=0.0)
    max_described_objects: int = param(3, "most objects one caption describes", ge=1, le=4)
    position_facts: bool = param(True, "captions may state an object's cell ('in the top left')")
    relation_prob: float = param(0.3, "P(two consecutive described objects are linked by 'left of'/'above'/...)",
                                 ge=0.0, le=1.0)
    paraphrase: bool = param(True, "use several caption templates per fact set")
    size_radii: list[float] = param([0.2, 0.36], "half-extent of each object size, fraction of the cell side",
                                    each_ge=0.05, each_le=0.5)
    position_jitter: float = param(0.1, "random shift of an object inside its cell, fraction of the cell side",
                                   ge=0.0, le=0.3)
    supersample: int = param(3, "anti-aliasing: sub-pixels per pixel side when rendering shapes", ge=1, le=8)
    background: int = param(16, "grey level of the image background", ge=0, le=255)
    max_digits: int = param(3, "digits_scenes: most digits per canvas", ge=1)
    min_digits: int = param(1, "digits_scenes: fewest digits per canvas", ge=1)
    digit_parity_prob: float = param(0.25, "digits_scenes: P(a described digit is named by parity, not value)",
                                     ge=0.0, le=1.0)
    count_fact_prob: float = param(0.2, "digits_scenes: P(a caption states how many digits there are)",
                                   ge=0.0, le=1.0)
    crop_scale_min: float = param(0.5, "albef_json: smallest crop area fraction of ALBEF's augmentation (data.augment)",
                                  gt=0.0, le=1.0)
    hflip_prob: float = param(0.5, "albef_json: horizontal flip probability of ALBEF's augmentation (data.augment)",
                              ge=0.0, le=1.0)
    caption_max_words: int = param(30, "albef_json: captions are cut to this many words (ALBEF's pre_caption)", ge=1)

    # --- from model: model shapes over the preset and loss details (docs/ALGORITHM.md §12) ---
    momentum_coef: float = param(0.995, "EMA coefficient of the momentum encoders (ALBEF 0.995)", ge=0.0, le=1.0)
    patch_size: int | None = param(None, "ViT patch size (null: preset)", ge=1)
    patch_stem: str | None = param(None, "ViT patch embedding: linear (ViT) or conv (3x3 stride-2 convolutions, "
                                   "Xiao et al. 2021; power-of-two patch size) (null: preset)",
                                   choices=["linear", "conv"])
    vision_hidden: int | None = param(None, "ViT width (null: preset)", ge=8)
    vision_layers: int | None = param(None, "ViT depth (null: preset)", ge=1)
    vision_heads: int | None = param(None, "ViT attention heads (null: `heads` if set, else preset)", ge=1)
    text_hidden: int | None = param(None, "BERT width (null: preset)", ge=8)
    text_layers: int | None = param(None, "text-only BERT layers (null: preset)", ge=0)
    fusion_layers: int | None = param(None, "BERT layers with cross-attention (null: preset)", ge=1)
    heads: int | None = param(None, "attention heads of BERT (and of the ViT unless vision_heads) (null: preset)",
                              ge=1)
    mlp_ratio: int | None = param(None, "feed-forward width / hidden width of randomly initialised ViT/BERT "
                                  "(null: preset)", ge=1)
    qformer_layers: int | None = param(None, "blip2: Q-Former (BERT) layers (null: preset; for an ALBEF preset "
                                       "text_layers + fusion_layers)", ge=1)
    num_query_tokens: int | None = param(None, "blip2: learned query tokens of the Q-Former (null: preset; BLIP-2 "
                                         "32)", ge=1)
    cross_attention_freq: int | None = param(None, "blip2: a Q-Former layer cross-attends to the image every N "
                                             "layers, starting with the first (null: preset; BLIP-2 2)", ge=1)
    init_std: float | None = param(None, "std of the normal init of new weights, BERT's initializer_range "
                                          "(null: preset; 0.02 in BERT, larger in the shallow presets)", gt=0.0)
    max_positions: int = param(512, "BERT position-embedding table size (>= data.max_text_len)", ge=4)
    attention: str = param("auto", "attention kernel: auto = eager on CPU (2x faster than SDPA for these short "
                           "sequences), sdpa on CUDA", choices=["auto", "eager", "sdpa"])
    temperature_min: float = param(0.001, "lower clamp of the learned temperature (ALBEF 0.001)", gt=0.0)
    temperature_max: float = param(0.5, "upper clamp of the learned temperature (ALBEF 0.5)", gt=0.0)
    itm_temperature: float | None = param(None, "temperature of the ITM negative sampling softmax over in-batch "
                                          "cosine similarities (null: the learned ITC temperature, ALBEF); larger "
                                          "values draw easier negatives", gt=0.0)
    mlm_softmax: str = param("batch", "output classes of the language-modelling loss (ALBEF's MLM, BLIP-2's ITG): the "
                             "whole vocabulary, or the tokens present in the batch (in-batch sampled softmax; ~40 "
                             "ms/step cheaper on CPU at B=64)",
                             choices=["full", "batch"])
    mlm_mask_ratio: float = param(0.8, "of the masked tokens: share replaced by [MASK] (BERT 0.8)", ge=0.0, le=1.0)
    mlm_random_ratio: float = param(0.1, "of the masked tokens: share replaced by a random token (BERT 0.1)",
                                    ge=0.0, le=1.0)
    itg_label_smoothing: float = param(0.1, "blip2: label smoothing of the ITG loss optimised (LAVIS 0.1); the "
                                       "reported and rewarded ITG loss is the plain cross-entropy", ge=0.0, lt=1.0)
    itc_label_smoothing: float | None = param(None, "ITC label smoothing ε, (1 - ε)·target + ε/N (MAFA's S-ITC); "
                                              "null: mafa.smoothing with model.false_negatives=mafa, else 0",
                                              ge=0.0, lt=1.0)
    itc_smoothing_start: int | None = param(None, "trainer step from which ITC label smoothing applies; null: the "
                                            "first mined step (after env.warmup_steps in train-agent / ablate, as "
                                            "MAFA smooths from its 2nd epoch, GRIT's 1st being random), 0 in "
                                            "pretrain", ge=0)
    itc_consistency: float = param(0.0, "GRIT-VLP's ITC consistency term: its weight (GRIT 0.2) on the in-batch "
                                   "cross-entropy of each direction's softmax toward the other's (stop-gradient); "
                                   "ALBEF only", ge=0.0)
    itm_negatives: str = param("sample", "ITM hard negative: ALBEF multinomial or GRIT top-1",
                               choices=["sample", "hardest"])
    distill_warmup_steps: int = param(0, "alpha ramps linearly from 0 over these steps (ALBEF: 1st epoch)", ge=0)

    # --- from mining: search spaces, chain and state variants (docs/ALGORITHM.md §2-4) ---
    positive_margin: float | None = param(
        None, "label-free false-negative filter, any scheduler (null: off): the chain skips candidate c of member a "
        "when S[a, c] >= min(own[a], own[c]) - margin, own = each member's own-pair score (NV-Retriever's "
        "positive-aware mining); 0 skips candidates scored at least as high as a positive")
    oracle_scope: str = param("batch", "oracle exclusion (and experimental.positive_margin's): skip the excluded "
                              "candidates of every member already in the batch (no two matching pairs share a "
                              "batch unless forced) or only those of the current anchor (the pre-0.2 oracle)",
                              choices=["batch", "anchor"])
    state_positive_rank: bool = param(False, "add the share of the member's candidates that the model scores at "
                                      "least as high as its own pair (label-free: high for vague captions, "
                                      "whose hardest negatives are likely false negatives)")
    state_specificity: bool = param(False, "ablation only: add the caption's true specificity (ground truth)")
    state_profile: str = param("softmax", "quantile columns of the state: softmax weights over the m quantiles "
                               "(shape of the similarity profile, each row sums to 1) or the raw similarity "
                               "quantiles (docs/ALGORITHM.md §4)", choices=["softmax", "raw"])
    state_temperature: float = param(0.1, "softmax temperature of the quantile state", gt=0.0)
    state_chunk_rows: int = param(1024, "rows of S reduced at once for the state (memory: rows x |M|)", ge=1)
    knn_chunk: int = param(4096, "query rows per chunk of the exact torch kNN (memory: chunk x N floats)", ge=1)
    ivf_lists: int = param(64, "IVF lists (faiss-ivf)", ge=1)
    ivf_probe: int = param(8, "IVF lists probed (faiss-ivf)", ge=1)
    cache_refresh_chunk: int = param(4096, "pairs per embed_fn call of a full cache refresh", ge=1)
    chain_prefetch: bool = param(True, "overlap batch building with training (ChainStream: batch b+1 is built in "
                                 "a background thread while batch b trains; same batches)")
    space_remainder: str = param(
        "fill", "n % |M| leftover pairs per epoch: fill the last space with pairs re-used from other "
        "spaces (every pair covered, all spaces |M|), drop them, or keep a smaller last space",
        choices=["fill", "drop", "keep"])
    state_quantiles: int = param(16, "m: quantiles of each sorted similarity row", ge=2)
    state_progress: bool = param(True, "add training progress to each member's state")
    state_last_loss: bool = param(False, "add the member's last ITC loss to its state")
    state_prev_q: bool = param(False, "add the member's previous q to its state")
    remainder: str = param("last_batch", "members left after full batches: a smaller last batch or dropped",
                           choices=["last_batch", "drop"])
    chain_backend: str = param("numba", "quantile-chain kernel (numba falls back to numpy, same batches, "
                               "when numba is not installed)", choices=["numba", "numpy", "torch"])

    # --- from env: reward estimators, action variants, toy and timing (docs/ALGORITHM.md §5) ---
    toy_optimum: list[float] = param([0.2, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.0],
                                     "toy reward: optimal q per specificity 1..8 (tests)",
                                     each_ge=0.0, each_le=1.0)
    reward_estimator: str = param("exact", "lm (mlm) reward: exact (L_LM before - after on the whole batch) or "
                                  "subbatch "
                                  "(the same difference on experimental.reward_subbatch evenly spaced pairs of the batch, "
                                  "same masks: one smaller extra forward)", choices=["exact", "subbatch"])
    reward_subbatch: int = param(32, "experimental.reward_estimator=subbatch: pairs of each batch the after-loss is "
                                 "computed on (>= train.batch_size: the whole batch, equal to exact)", ge=1)
    gt_loss: str = param("positive", "env.gt_targets: truly matching in-batch pairs are ITC positives (positive: the "
                         "oracle-targets bound) or left out of ITC and ITM (mask: the false-negative control, "
                         "GRIT's batches without the cost of their false negatives; ALBEF)",
                         choices=["positive", "mask"])
    reward_every: int = param(1, "per-batch reward: measured around every n-th optimiser step only (trainer step "
                              "divisible by n; the step reward is the mean over those batches, and only their members' "
                              "q's are credited); 1: every batch, exact", ge=1)
    reward_val_weight: float = param(3.0, "itc+val_itc reward: λ in ΔL_ITC(batch) + λ·ΔL_ITC(held-out pairs); "
                                     "λ ≈ 1 stops paying for false negatives, λ ≈ 3 penalises them (reward-check)",
                                     ge=0.0)
    reward_mlm_prob: float = param(0.5, "mlm_hi reward: masking probability of its own masks (GRIT's 0.5)",
                                   gt=0.0, lt=1.0)
    member_reward: str = param("own", rewards.member_doc(), choices=list(rewards.MEMBER_SIGNALS))
    retrieval_pairs: int = param(500, "held-out pairs for the retrieval reward", ge=10)
    info_timing: bool = param(False, "put the wall-clock step_time and its split (time: train, reward, chain, "
                                     "state) in info (off by default, so info is exactly reproducible and "
                                     "Gymnasium's checker passes; train-agent logs time/* anyway)")
    reward_scale: float = param(1.0, "reward multiplier", gt=0.0)
    action: str = param("box", "continuous q per member or K discrete levels",
                        choices=["box", "discrete"])
    levels: int = param(5, "discrete variant: K hardness levels", ge=2)
    compute_reward: str = param("auto", "compute the reward's extra forwards: auto = only when the scheduler learns "
                                "from the reward (train-agent / ablate decide; a bare env computes it), always "
                                "(e.g. to log it for heuristics), never (reward NaN)",
                                choices=["auto", "always", "never"])
    reward_log: list[str] = param([], rewards.log_doc())
    val_pairs: int = param(256, "val_itc / val_lm rewards: evenly spaced training pairs held out (with every pair "
                           "of their images) from the search spaces and the warm-up, on which the loss drop is "
                           "measured; only held out when such a reward is computed or logged", ge=1)

    # --- from agent: FALCON and SB3 learner variants (docs/ALGORITHM.md §6-7) ---
    step_noise: float = param(0.0, "FALCON: std of one logit offset shared by every member of an env step, "
                              "q = sigmoid(logit(x) + z), z ~ N(level, step_noise^2); the level is learned by "
                              "REINFORCE on the step reward (0 = off, the paper's per-member exploration only; "
                              "falcon_rl.agents.step_shift)", ge=0.0)
    step_lr: float = param(0.1, "FALCON with experimental.step_noise > 0: learning rate of the shared level (logit units "
                           "per unit of normalised advantage)", ge=0.0)
    step_level: float = param(0.0, "FALCON with experimental.step_noise > 0: the shared level's start (logit units; 0 "
                              "leaves the Beta samples' median where it is)")
    credit: str = param("step", "FALCON credit: the step's mean reward to every member (step), each batch's "
                        "reward to the members trained in it (batch, paper §2.5), or each member's own loss "
                        "change in its batch (member: per-sample ΔL of its pair, env.reward lm (mlm), lm_sample, "
                        "mlm_hi, itc (its two in-batch ITC rows) or itc+val_itc (those plus λ·Δ held-out ITC))", choices=["step", "batch", "member"])
    center: str = param("none", "advantages of per-member credit: reward - moving-average baseline (none), minus "
                        "the mean over the step's members (step: the learning-rate trend cancels; needs credit "
                        "batch or member) or over the member's batch (batch; needs credit member)",
                        choices=["none", "step", "batch"])
    update_unit: str = param("step", "FALCON: one REINFORCE update per env step (from experimental.update_every steps), or "
                             "one per trained batch, from that batch's members (batch; needs credit batch or "
                             "member)", choices=["step", "batch"])
    normalize_reward: bool = param(True, "divide advantages by a running std of the advantages (momentum "
                                   "experimental.reward_std_momentum)")
    reward_std_momentum: float = param(0.999, "momentum of the running advantage std of experimental.normalize_reward: "
                                       "slow, so that it keeps the reward's range and does not shrink to the "
                                       "converged policy's sampling noise", ge=0.0, lt=1.0)
    min_concentration: float = param(1.0, "lower bound added to Beta alpha, beta", ge=0.0)
    baseline_momentum: float = param(0.9, "moving-average reward baseline momentum", ge=0.0, lt=1.0)
    sb3_shared_noise: bool = param(False, "PPO / A2C with Box actions: add one Gaussian noise term shared by every "
                                   "member of a step (its own learned log-std), so a whole step is explored harder "
                                   "or softer together; the SB3 counterpart of experimental.step_noise "
                                   "(agents/sb3_policies.py::SharedNoiseGaussian)")
    sb3_member_ratio: bool = param(False, "PPO with Box actions and per-member noise: clip one probability ratio "
                                   "per member (each member an agent sharing the step's advantage, as multi-agent "
                                   "PPO does) instead of the joint action's ratio, which |M| members push out of "
                                   "the clip range at once (agents/sb3_member_ppo.py); with experimental.sb3_shared_noise "
                                   "the step's common mode gets a ratio of its own")
    sb3_common_weight: float = param(0.5, "experimental.sb3_member_ratio with experimental.sb3_shared_noise: weight of the common "
                                     "mode's clipped term (the member residuals share the rest)", ge=0.0, le=1.0)
    sb3_pool: str = param("mean+max", "SB3 critics: pooling of member features",
                          choices=["mean", "max", "mean+max"])
    hidden: int = param(64, "FALCON residual-MLP width", ge=4)
    blocks: int = param(4, "FALCON residual blocks", ge=1)
    q_by_specificity: list[float] = param([0.75, 0.93, 0.96, 0.98],
                                          "by-specificity (a reference that reads the true caption specificity, "
                                          "experimental.state_specificity; not label-free): q for a caption stating "
                                          "1, 2, ... K facts, K = the split's most", each_ge=0.0, each_le=1.0)
    frozen_deterministic: bool = param(False, "frozen agents (pretrain --scheduler): mean q instead of sampling")
    update_every: int = param(1, "REINFORCE update every N env steps", ge=1)

    # --- from reward_check: falcon-rl reward-check analysis ---
    hardness: str = param("rank_quantile", "per-batch regression's hardness: the mean rank quantile of the "
                          "batch's chain picks among the remaining candidates, or their mean q",
                          choices=["rank_quantile", "q_mean"])
    horizons: list[int] = param([1, 10], "learnability table: env steps a learner sums the reward over before "
                                "comparing (the noise of a k-step sum, and the env steps it needs)", each_ge=1)
    reference: str = param("random", "learnability table: the policy the best one (by the first metric) is "
                           "compared with (a scheduler not among reward_check.policies leaves the table empty)")

    # --- from eval: evaluation on the built-in benchmarks ---
    by_specificity: bool = param(True, "also report every metric per caption specificity (/spec{F})")

    # --- from mafa: MAFA variants (docs/ALGORITHM.md §11) ---
    extra_mlm: bool = param(True, "a converted pair is also an extra MLM sample (its text's masks, predicted "
                            "from the other image; MAFA)")
    snapshot_every: int = param(100, "filter=snapshot: the model is copied into the filter when mining starts and "
                                "again whenever the copy is N optimiser steps old", ge=1)
    filter_seed: int = param(0, "filter=pretrain: seed of the filter's training (one filter for every seed of an "
                             "ablation, as MAFA trains one)", ge=0)

    def __post_init__(self) -> None:
        if self.temperature_min > self.temperature_max:
            raise ValueError(f"temperature_min={self.temperature_min} > temperature_max={self.temperature_max}")
        if self.mlm_mask_ratio + self.mlm_random_ratio > 1.0 + 1e-9:
            raise ValueError(f"mlm_mask_ratio + mlm_random_ratio = {self.mlm_mask_ratio + self.mlm_random_ratio} > 1")


#: every experimental key's default (the class attributes of the sections they came from)
_DEFAULTS: dict[str, Any] = {f.name: getattr(ExperimentalConfig(), f.name) for f in fields(ExperimentalConfig)}
#: old "section.key" -> new experimental key
MOVED_TO: dict[str, str] = {f"{s}.{k}": new for new, (s, k) in MOVED_FROM.items()}


def moved_error(section: str, key: str) -> str | None:
    """``'<section>.<key> moved to experimental.<new>'`` (or ``agent.sb3.<new>``) for a key that
    moved, else None."""
    new = MOVED_TO.get(f"{section}.{key}")
    if new is not None:
        return f"{section}.{key} moved to experimental.{new}"
    if section == "agent" and key in SB3_RENAMED:
        return f"agent.{key} moved to agent.sb3.{SB3_RENAMED[key]}"
    return None


def old_layout(d: dict[str, Any]) -> dict[str, Any]:
    """A config mapping (:func:`falcon_rl.config.loader.to_dict`) in the layout before the
    ``experimental`` section: every experimental key back in its old section (appended), no
    ``experimental`` section, and ``agent.sb3.*`` as the ``agent.sb3_*`` keys they were. A mapping without
    either is returned as it is (files written before)."""
    nested_sb3 = isinstance(d.get("agent"), dict) and isinstance(d["agent"].get("sb3"), dict)
    if "experimental" not in d and not nested_sb3:
        return d
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items() if k != "experimental"}
    for new, value in (d.get("experimental") or {}).items():
        section, key = MOVED_FROM[new]
        out.setdefault(section, {})[key] = value
    if nested_sb3:  # agent.sb3.<key> -> agent.sb3_<key>
        sb3 = out["agent"].pop("sb3")
        out["agent"].update({old: sb3[new] for old, new in SB3_RENAMED.items() if new in sb3})
    return out


def section_view(section: str):
    """Class decorator: the keys moved out of ``section`` stay readable (and settable) as attributes
    of its dataclass, reading the :class:`ExperimentalConfig` the section is bound to
    (:meth:`falcon_rl.config.schema.ExperimentConfig.__post_init__` binds every section; a section
    built alone gets the defaults). They are not fields: not in ``dataclasses.fields``, the YAML or
    ``config --docs``."""
    moved = [(k, new) for new, (s, k) in MOVED_FROM.items() if s == section]

    def decorate(cls):
        for key, new in moved:
            setattr(cls, key, _Moved(new, f"experimental.{new} (moved from {section}.{key})"))
        cls._section = section
        return cls

    return decorate


class _Moved:
    """A moved key read through its old section: the bound experimental section's value on an
    instance, the default on the class (``MiningConfig.state_chunk_rows``, as before the move)."""

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.__doc__ = name, doc

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return _DEFAULTS[self.name]
        return getattr(experimental_of(obj), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(experimental_of(obj), self.name, value)


def experimental_of(section_obj: Any) -> ExperimentalConfig:
    """The :class:`ExperimentalConfig` a section object reads its moved keys from."""
    exp = section_obj.__dict__.get("_experimental")
    if exp is None:
        exp = ExperimentalConfig()
        section_obj.__dict__["_experimental"] = exp
    return exp


def bind(section_obj: Any, exp: ExperimentalConfig) -> Any:
    """``section_obj`` reading its moved keys from ``exp`` (a shallow copy when it is bound to another
    one already, so that the config it came from keeps its own)."""
    have = section_obj.__dict__.get("_experimental")
    if have is not None and have is not exp:
        import copy

        section_obj = copy.copy(section_obj)
    section_obj.__dict__["_experimental"] = exp
    return section_obj


def _split(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` of a section split into its fields and its moved keys (renamed to experimental's)."""
    section = getattr(cls, "_section", None)
    own = {f.name for f in fields(cls)}
    mine = {k: v for k, v in kwargs.items() if k in own}
    moved = {}
    for k, v in kwargs.items():
        if k in own:
            continue
        new = MOVED_TO.get(f"{section}.{k}")
        if new is None:
            raise TypeError(f"{cls.__name__} has no key {k!r}")
        moved[new] = v
    return mine, moved


def build_section(cls: type, base: ExperimentalConfig | None = None, **kwargs: Any) -> Any:
    """A section dataclass built alone (Python API, tests) from its keys and those that moved out of it
    (``build_section(AgentConfig, hidden=16, lr=1e-3)``); the moved ones on top of ``base``."""
    mine, moved = _split(cls, kwargs)
    obj = cls(**mine)
    obj.__dict__["_experimental"] = replace(base if base is not None else ExperimentalConfig(), **moved)
    return obj


def replace_section(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for a section, also accepting the keys that moved out of it (the copy
    reads a copy of the original's experimental section with those changed)."""
    mine, moved = _split(type(obj), changes)
    new = replace(obj, **mine)
    new.__dict__["_experimental"] = replace(experimental_of(obj), **moved)
    return new


def section_dict(obj: Any) -> dict[str, Any]:
    """A section's fields plus the keys that moved out of it, under their old names (e.g. a saved
    agent's config, which keeps its network's ``hidden`` / ``blocks``)."""
    out = asdict(obj)
    section = getattr(type(obj), "_section", None)
    for new, (s, k) in MOVED_FROM.items():
        if s == section:
            out[k] = getattr(experimental_of(obj), new)
    return out
