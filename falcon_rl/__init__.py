"""falcon-rl: learned negative mining for contrastive vision-language pretraining as a Gymnasium env."""

__version__ = "0.1.0"
