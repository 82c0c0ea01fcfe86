"""``agent`` section: the negative-mining scheduler (docs/ALGORITHM.md §6-7)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class AgentConfig:
    """Scheduler choice and its hyper-parameters."""

    name: str = param("falcon", "scheduler name (see falcon_rl.agents.available())")
    q: float = param(0.5, "fixed: the constant q", ge=0.0, le=1.0)
    q_by_specificity: list[float] = param([0.75, 0.93, 0.96, 0.98],
                                          "by-specificity (a reference that reads the true caption specificity, "
                                          "mining.state_specificity; not label-free): q for a caption stating "
                                          "1, 2, ... K facts, K = the split's most", each_ge=0.0, each_le=1.0)
    hidden: int = param(64, "FALCON residual-MLP width", ge=4)
    blocks: int = param(4, "FALCON residual blocks", ge=1)
    lr: float = param(1e-3, "scheduler learning rate (FALCON / batch-level Adam; SB3 learning_rate)", gt=0.0)
    update_every: int = param(1, "REINFORCE update every N env steps", ge=1)
    baseline_momentum: float = param(0.9, "moving-average reward baseline momentum", ge=0.0, lt=1.0)
    entropy_coef: float = param(1e-3, "entropy bonus weight", ge=0.0)
    normalize_reward: bool = param(True, "divide advantages by a running std of the advantages (momentum "
                                   "agent.reward_std_momentum)")
    reward_std_momentum: float = param(0.999, "momentum of the running advantage std of agent.normalize_reward: "
                                       "slow, so that it keeps the reward's range and does not shrink to the "
                                       "converged policy's sampling noise", ge=0.0, lt=1.0)
    min_concentration: float = param(1.0, "lower bound added to Beta alpha, beta", ge=0.0)
    grad_clip: float = param(1.0, "FALCON / batch-level: max gradient norm of an update (0 = off)", ge=0.0)
    seed: int | None = param(None, "scheduler sampling / init seed (null: train.seed)", ge=0)
    frozen_deterministic: bool = param(False, "frozen agents (pretrain --scheduler): mean q instead of sampling")
    sb3_total_steps: int = param(200, "SB3 agents: env steps of learning", ge=1)
    sb3_n_steps: int = param(8, "PPO/A2C rollout length", ge=1)
    sb3_gamma: float = param(0.0, "SB3 discount; 0 treats every env step as a bandit, like FALCON's REINFORCE",
                             ge=0.0, le=1.0)
    sb3_hidden: list[int] = param([64, 64], "SB3 per-member MLP widths (shared over members)", each_ge=1)
    sb3_pool: str = param("mean+max", "SB3 critics: pooling of member features",
                          choices=["mean", "max", "mean+max"])
    sb3_shared_noise: bool = param(False, "PPO / A2C with Box actions: add one Gaussian noise term shared by every "
                                   "member of a step (its own learned log-std), so a whole step is explored harder "
                                   "or softer together; the SB3 counterpart of agent.step_noise "
                                   "(agents/sb3_policies.py::SharedNoiseGaussian)")
    sb3_member_ratio: bool = param(False, "PPO with Box actions and per-member noise: clip one probability ratio "
                                   "per member (each member an agent sharing the step's advantage, as multi-agent "
                                   "PPO does) instead of the joint action's ratio, which |M| members push out of "
                                   "the clip range at once (agents/sb3_member_ppo.py); with agent.sb3_shared_noise "
                                   "the step's common mode gets a ratio of its own")
    sb3_common_weight: float = param(0.5, "agent.sb3_member_ratio with agent.sb3_shared_noise: weight of the common "
                                     "mode's clipped term (the member residuals share the rest)", ge=0.0, le=1.0)
    sb3_kwargs: dict = param({}, "extra keyword arguments for the SB3 algorithm")
    credit: str = param("step", "FALCON credit: the step's mean reward to every member (step), each batch's "
                        "reward to the members trained in it (batch, paper §2.5), or each member's own loss "
                        "change in its batch (member: per-sample ΔL of its pair, env.reward lm (mlm), lm_sample, "
                        "mlm_hi, itc (its two in-batch ITC rows) or itc+val_itc (those plus λ·Δ held-out ITC))", choices=["step", "batch", "member"])
    center: str = param("none", "advantages of per-member credit: reward - moving-average baseline (none), minus "
                        "the mean over the step's members (step: the learning-rate trend cancels; needs credit "
                        "batch or member) or over the member's batch (batch; needs credit member)",
                        choices=["none", "step", "batch"])
    update_unit: str = param("step", "FALCON: one REINFORCE update per env step (from agent.update_every steps), or "
                             "one per trained batch, from that batch's members (batch; needs credit batch or "
                             "member)", choices=["step", "batch"])
    step_noise: float = param(0.0, "FALCON: std of one logit offset shared by every member of an env step, "
                              "q = sigmoid(logit(x) + z), z ~ N(level, step_noise^2); the level is learned by "
                              "REINFORCE on the step reward (0 = off, the paper's per-member exploration only; "
                              "falcon_rl.agents.step_shift)", ge=0.0)
    step_lr: float = param(0.1, "FALCON with agent.step_noise > 0: learning rate of the shared level (logit units "
                           "per unit of normalised advantage)", ge=0.0)
    step_level: float = param(0.0, "FALCON with agent.step_noise > 0: the shared level's start (logit units; 0 "
                              "leaves the Beta samples' median where it is)")
    train_episodes: int = param(0, "learn for N episodes first (in <out_dir>/train, every episode restarting "
                                "pretraining from the warm start), then report a fresh pretraining run with that "
                                "agent frozen (0: the reported run is the learning run itself; ignored with "
                                "agent.load_path)", ge=0)
    load_path: str | None = param(None, "load a trained agent (frozen) from this file")
    checkpoint_every: int = param(10, "train-agent: write the resume checkpoint every N env steps (0: only on "
                                  "Ctrl-C); SB3 agents at the first update boundary after N steps", ge=0)
    trust_agent_file: bool = param(False, "let SB3 unpickle (run) the serialized entries of an agent.zip that "
                                   "falcon-rl cannot rebuild; only for files from a trusted source "
                                   "(CLI: --trust-agent-file)")
