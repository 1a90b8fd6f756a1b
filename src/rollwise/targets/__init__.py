"""Targets: where code runs. One small interface; the controller's registry builds them."""

from rollwise.targets.base import InstanceInfo, Target

__all__ = ["InstanceInfo", "Target"]
