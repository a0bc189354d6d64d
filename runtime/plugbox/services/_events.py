"""The event bus behind the ``events`` host service.

Plugins emit events (``events.emit``); the host application subscribes with ``fnmatch`` patterns
on the topic. Delivery is synchronous, in the emitting thread, in subscription order. A failing
subscriber is logged and skipped: it can neither break the emitting plugin nor starve the other
subscribers.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventBus"]

_logger = logging.getLogger("plugbox.events")


@dataclass(frozen=True, slots=True)
class Event:
    """One event emitted by a plugin.

    ``timestamp`` is wall-clock nanoseconds since the Unix epoch, taken when the plugin emitted.
    """

    plugin: str
    topic: str
    payload: bytes
    timestamp: int

    def json(self) -> Any:
        """The payload decoded as JSON (raises ``ValueError`` if it is not valid JSON)."""
        return json.loads(self.payload)


# (compiled pattern match function, callback, pattern) -- pattern kept for error messages.
_Subscriber = tuple[Callable[[str], object], Callable[[Event], None], str]


class EventBus:
    """Synchronous publish/subscribe of :class:`Event` by topic pattern; thread-safe.

    The subscriber list is copy-on-write: ``publish`` iterates an immutable snapshot without
    taking a lock, so emitting is lock-free and subscribers may (un)subscribe from inside a
    callback without deadlocking or disturbing the delivery in progress.
    """

    def __init__(self) -> None:
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, pattern: str, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every event whose topic matches ``pattern``.

        ``pattern`` is an ``fnmatch`` pattern matched case-sensitively against the whole topic
        (``"orders.*"``, ``"*"``). Returns a function that unsubscribes; calling it more than
        once is harmless.
        """
        # Compiled once here instead of fnmatch per publish: a regex match is the whole cost.
        match = re.compile(fnmatch.translate(pattern)).match
        entry: _Subscriber = (match, callback, pattern)
        with self._lock:
            self._subscribers = (*self._subscribers, entry)

        def unsubscribe() -> None:
            with self._lock:
                # Identity, not equality: the same callback may be subscribed twice.
                self._subscribers = tuple(s for s in self._subscribers if s is not entry)

        return unsubscribe

    def has_subscribers(self) -> bool:
        """True when at least one subscriber exists (lets emitters skip building events)."""
        return bool(self._subscribers)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every matching subscriber, now, in this thread.

        An exception raised by a subscriber is logged on ``plugbox.events`` and swallowed.
        """
        for match, callback, pattern in self._subscribers:
            if match(event.topic) is None:
                continue
            try:
                callback(event)
            except Exception:
                _logger.exception(
                    "event subscriber %r (pattern %r) failed on topic %r from plugin %r",
                    callback,
                    pattern,
                    event.topic,
                    event.plugin,
                )
