"""Negative-mining schedulers (installed as falcon_rl.agents)."""
