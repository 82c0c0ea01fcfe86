"""A scheduler in plain PyTorch: one small network shared by every member, trained by REINFORCE.

    python examples/torch_loop.py         (from the repository root; about a minute on a CPU)
"""
import gymnasium as gym
import torch

import falcon_rl.envs  # noqa: F401  (registers falcon_rl/NegativeMining-v0)


def main(config: str = "configs/snippet.yaml", seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    env = gym.make("falcon_rl/NegativeMining-v0", config=config)   # actions: q in [0, 1] per member
    features = env.observation_space.shape[1]                      # (|M|, features): one row per member
    net = torch.nn.Sequential(torch.nn.Linear(features, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    obs, _ = env.reset(seed=seed)
    baseline, rewards, done = 0.0, [], False
    while not done:
        logits = net(torch.as_tensor(obs)).squeeze(-1)              # one logit per member
        dist = torch.distributions.Normal(logits, 0.5)
        z = dist.sample()
        obs, reward, terminated, truncated, info = env.step(torch.sigmoid(z).numpy())  # q = sigmoid(z)
        loss = -(reward - baseline) * dist.log_prob(z).sum()           # REINFORCE, moving-average baseline
        opt.zero_grad()
        loss.backward()
        opt.step()
        baseline = 0.9 * baseline + 0.1 * reward
        rewards.append(float(reward))
        done = terminated or truncated
    print(f"{len(rewards)} env steps, mean reward {sum(rewards) / len(rewards):+.4f}")
    return rewards


if __name__ == "__main__":
    main()
