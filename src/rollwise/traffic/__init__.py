"""Traffic routers: who gets requests. One small interface; the controller's registry builds
them."""

from rollwise.traffic.base import Backend, TrafficRouter

__all__ = ["Backend", "TrafficRouter"]
