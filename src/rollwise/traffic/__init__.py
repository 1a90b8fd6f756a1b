"""Traffic routers: who gets requests. One small interface, built-ins from a factory."""

from rollwise.traffic.base import Backend, TrafficRouter, make_router

__all__ = ["Backend", "TrafficRouter", "make_router"]
