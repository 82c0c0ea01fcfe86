"""Your own Stable-Baselines3 PPO on the environment, with falcon-rl's per-member policy.

    python examples/sb3_ppo.py            (from the repository root; about a minute on a CPU)
"""
import gymnasium as gym
from stable_baselines3 import PPO

import falcon_rl.envs  # noqa: F401  (registers falcon_rl/NegativeMining-v0)
from falcon_rl.agents import sb3_setup


def main(config: str = "configs/snippet.yaml", steps: int = 16) -> PPO:
    env = gym.make("falcon_rl/NegativeMining-v0", config=config)
    env, kwargs = sb3_setup(env, "ppo")  # actions in [-1, 1], q = (a + 1) / 2; per-member policy
    model = PPO(env=env, **kwargs)       # kwargs: policy=MemberActorCriticPolicy, n_steps, lr, seed ...
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    print(f"q before learning: mean {(action.mean() + 1) / 2:.3f}")  # 0.5: not at a bound
    model.learn(total_timesteps=steps)
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    print(f"q after {steps} env steps: mean {(action.mean() + 1) / 2:.3f}")
    return model


if __name__ == "__main__":
    main()
