"""Stop requests: Ctrl-C (SIGINT) or SIGTERM end training at the next safe point, not mid-step.

A KeyboardInterrupt can land anywhere - inside optimizer.step(), or between the step and the
iteration counter - and a checkpoint taken then does not match its own progress counters, so a
resumed run would differ from an uninterrupted one. The handler only records the request; the loop
checks it between iterations and saves a consistent checkpoint. SIGTERM (what cluster schedulers
send before killing a job) is treated the same. A second signal aborts at once, without saving -
except within `repeat_grace_s` of the first, for processes that get one request twice (a scheduler
signals every process of a job, and torchrun or the --parallel parent forwards it as well).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager; `requested` turns True on the first stop signal received inside it.

    Handlers can only be installed from the main thread; elsewhere the context does nothing and
    signals keep their usual effect.
    """

    def __init__(self, repeat_grace_s: float = 0.0) -> None:
        self.requested = False
        self.repeat_grace_s = repeat_grace_s
        self._first_at: float | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the best guess
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested and (self._first_at is None or now - self._first_at < self.repeat_grace_s):
            self._first_at = self._first_at or now  # None: requested by another rank; this is the same request
            return
        if self.requested:  # asked twice: the user does not want to wait for the checkpoint
            raise KeyboardInterrupt
        self.requested, self._first_at = True, now
        log.warning("%s received: stopping after the current step and saving a checkpoint "
                    "(send it again to abort without saving)", signal.Signals(signum).name)

