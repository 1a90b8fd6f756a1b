"""One event stream: audit log, CLI progress (and later dashboard, notifications) subscribe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rollwise.chain import Event

Subscriber = Callable[[Event], None]


@dataclass
class EventBus:
    subscribers: list[Subscriber] = field(default_factory=list)

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def emit(self, ev: Event) -> None:
        for fn in self.subscribers:
            fn(ev)
