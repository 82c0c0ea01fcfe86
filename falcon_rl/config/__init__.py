"""One config system: dataclasses loaded from YAML (``configs/``), overridable from the CLI."""

from falcon_rl.config.checks import check_devices, check_mining, check_model
from falcon_rl.config.fields import param
from falcon_rl.config.loader import ConfigError, dump_yaml, load_config, parse_override, read_yaml, to_dict
from falcon_rl.config.schema import ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig", "check_devices", "check_mining", "check_model", "dump_yaml",
           "load_config", "param", "parse_override", "read_yaml", "to_dict"]
