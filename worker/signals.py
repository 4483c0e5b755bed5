"""SIGTERM/SIGINT (stop) and SIGHUP (check for a new model), acted on off the main thread.

Why the handlers do nothing: CPython runs a Python signal handler on the main thread
between two bytecodes, possibly while that thread holds a lock that is not reentrant:
structlog's write lock (every log line) or the lock inside `threading.Event.wait` (the
backoff and poll pauses). A handler that logs, or sets an Event the main thread waits
on, can then wait for that lock forever and the drain never finishes. So:

1. `install` (main thread) gives the three signals a handler that does nothing and
   points CPython's C-level handler at a pipe (`signal.set_wakeup_fd`): it writes each
   signal's number there, whichever thread the kernel interrupted.
2. The `signals` thread reads the numbers and acts with ordinary locks: SIGTERM/SIGINT
   set `stop`, call every `on_stop` callback (the worker's `request_stop`), then log
   `stop_requested`; SIGHUP calls `on_reload`.

`modstream worker` installs it before anything else, so that a SIGTERM while the model
loads, warms up or the clients connect is a request to stop (exit 0 after the step in
progress), not death by the signal (exit 143 on Kubernetes).
"""

from __future__ import annotations

import os
import signal
import threading
import types
from collections.abc import Callable

import structlog

log = structlog.get_logger("modstream.cli")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP


def _do_nothing(signum: int, frame: types.FrameType | None) -> None:
    """The Python-level handler: its only job is to replace the default (terminate)."""


class SignalRelay:
    """Turns the process's signals into calls on a thread of its own.

    Threads: `install` and `uninstall` on the main thread; `on_stop`, `on_reload` and
    `stop` from any; the callbacks run on the `signals` thread.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._stop_callbacks: list[Callable[[], None]] = []
        self._reload: Callable[[], None] | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._previous: dict[int, object] = {}
        self._previous_fd = -1
        self._thread = threading.Thread(target=self._relay, name="signals", daemon=True)

    @property
    def requested(self) -> bool:
        """A stop signal arrived."""
        return self.stop.is_set()

    def install(self) -> None:
        """Step 1, then start the thread of step 2."""
        for signum in (*STOP_SIGNALS, RELOAD_SIGNAL):
            self._previous[signum] = signal.signal(signum, _do_nothing)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread.start()

    def uninstall(self, timeout_s: float = 10.0) -> None:
        """The handlers and wakeup pipe as they were before `install`, once the signals
        that arrived were acted on (tests)."""
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        os.close(self._write_fd)  # the thread reads to the end, then stops
        self._thread.join(timeout_s)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` at a stop signal; at once if one already arrived."""
        with self._lock:
            self._stop_callbacks.append(callback)
            arrived = self.stop.is_set()
        if arrived:
            callback()

    def on_reload(self, callback: Callable[[], None]) -> None:
        self._reload = callback

    def _relay(self) -> None:
        while True:
            try:
                numbers = os.read(self._read_fd, 64)
            except OSError:
                return
            if not numbers:
                os.close(self._read_fd)
                return
            for signum in numbers:
                self._act(signum)

    def _act(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            with self._lock:
                self.stop.set()
                callbacks = list(self._stop_callbacks)
            for callback in callbacks:
                callback()
            # Last: the main thread may be inside a log line right now. (Before logging
            # is configured, start-up's `stopped_during_startup` line says it instead.)
            if structlog.is_configured():
                log.info("stop_requested", signal=signal.Signals(signum).name)
        elif signum == RELOAD_SIGNAL and self._reload is not None:
            self._reload()
