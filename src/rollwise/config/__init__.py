"""Project configuration: `rollwise.yaml` schema, loading and error messages."""

from rollwise.config.load import CONFIG_FILE, find_config, load_config, load_config_text
from rollwise.config.schema import (
    EnvironmentConfig,
    HealthConfig,
    ProjectConfig,
    RouterConfig,
    RunConfig,
)

__all__ = [
    "CONFIG_FILE",
    "EnvironmentConfig",
    "HealthConfig",
    "ProjectConfig",
    "RouterConfig",
    "RunConfig",
    "find_config",
    "load_config",
    "load_config_text",
]
