"""worker/signals.py and `modstream worker` start-up: a SIGTERM never deadlocks the
drain and never kills a starting worker.

Each case runs in a child process (real signals, and a hang ends as a timeout instead
of hanging the suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import REPO_ROOT, free_port, make_checkpoint, wait_for

# The main thread holds structlog's write lock for stderr (as while writing any log
# line) when SIGTERM arrives; it lets go only once the stop was acted on elsewhere.
WHILE_LOGGING = """
import os, signal, sys, threading
import structlog
from structlog._output import _get_lock_for_file  # the lock every log line takes
from worker.logs import configure_logging

configure_logging("info")
{install}
write_lock = _get_lock_for_file(sys.stderr)
with write_lock:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10_000):  # bytecodes: the Python-level handler runs among them
        pass
    acted = stop.wait(5)
{finish}
sys.exit(0 if acted else 3)
"""

RELAY = """
from worker.signals import SignalRelay
relay = SignalRelay()
relay.install()
stop = relay.stop
"""

# What `modstream worker` did before: the handler logs, then sets the stop event.
LOGGING_HANDLER = """
log = structlog.get_logger("modstream.cli")
stop = threading.Event()
def _stop(signum, frame):
    log.info("stop_requested", signal=signal.Signals(signum).name)
    stop.set()
signal.signal(signal.SIGTERM, _stop)
"""


def run_child(script: str, timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    """The script's outcome, or None when it hung past `timeout_s`."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return None


def test_a_stop_signal_while_the_main_thread_logs_is_acted_on() -> None:
    script = WHILE_LOGGING.format(install=RELAY, finish="relay.uninstall()")
    done = run_child(script, timeout_s=60)
    assert done is not None, "deadlocked"
    assert done.returncode == 0, done.stderr
    assert '"event": "stop_requested"' in done.stderr
    assert '"signal": "SIGTERM"' in done.stderr


def test_a_handler_that_logs_deadlocks_in_the_same_situation() -> None:
    """The situation above is the one that hangs a handler that logs: the test can fail."""
    done = run_child(WHILE_LOGGING.format(install=LOGGING_HANDLER, finish=""), timeout_s=8)
    assert done is None or done.returncode != 0


def test_sigterm_while_the_worker_starts_up_exits_0(tmp_path: Path) -> None:
    """Killed by the signal, a pod's container reports 143; a worker must exit 0."""
    checkpoint = tmp_path / "current"
    make_checkpoint(checkpoint, 1)
    env = {
        **os.environ,
        "MODSTREAM_CHECKPOINT_DIR": str(checkpoint),
        "MODSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens
        "MODSTREAM_STARTUP_TIMEOUT_S": "20",
        "MODSTREAM_METRICS_HOST": "127.0.0.1",
        "MODSTREAM_METRICS_PORT": str(free_port()),
        "MODSTREAM_DEVICE": "cpu",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: b"worker_starting" in log_path.read_bytes() or proc.poll() is not None,
                60,
                "the worker's first log line",
            )
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    logs = log_path.read_text(errors="replace")
    assert code == 0, logs
    assert "stopped_during_startup" in logs
