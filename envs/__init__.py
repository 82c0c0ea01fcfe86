"""Gymnasium environments (installed as falcon_rl.envs)."""
