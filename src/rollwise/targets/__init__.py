"""Targets: where code runs. One small interface, built-ins from a factory."""

from rollwise.targets.base import InstanceInfo, Target, make_target

__all__ = ["InstanceInfo", "Target", "make_target"]
