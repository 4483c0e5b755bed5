"""A real, throw-away, single-node Apache Kafka broker for development and tests.

Why this exists: the worker must be tested against a genuine broker (consumer
group rebalances, transactions, offsets), never a mock, yet the build machines
have no Docker and no internet beyond package registries. Maven Central *is*
reachable, so the broker classpath (``kafka_2.13`` 4.1.1 + a log4j2 backend) is
resolved with ``mvn`` from ``pom.xml`` next to this file into a cache outside
git, and the broker runs as a plain JVM in KRaft combined mode
(broker+controller in one process, no ZooKeeper) on free loopback ports.

Only the standard library and kafka-python are used, so the module works both as
an importable helper (``tests/conftest.py`` loads it by file path because
``deploy/`` is not a package) and as a script::

    python deploy/local/kafka_local.py fetch   # resolve jars into the cache
    python deploy/local/kafka_local.py run     # print bootstrap=..., block until SIGTERM/SIGINT
    python deploy/local/kafka_local.py run --secure /tmp/tls   # + SASL_SSL, SSL, ACLs

:class:`SecureLocalKafka` adds what production clusters run: TLS with a CA, broker and
client certificates made with ``openssl`` at start (:func:`make_tls_files`), SCRAM and
OAUTHBEARER over ``SASL_SSL``, client-certificate authentication on ``SSL``, and the KRaft
``StandardAuthorizer`` with ACLs.

POSIX only (process groups, ``fcntl``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from kafka import KafkaAdminClient
from kafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

__all__ = [
    "ENV_BOOTSTRAP",
    "ENV_CACHE_DIR",
    "KAFKA_VERSION",
    "KafkaLocalError",
    "KafkaStartError",
    "LocalKafka",
    "SecureLocalKafka",
    "TlsFiles",
    "ToolMissingError",
    "broker_from_env",
    "cache_dir",
    "create_topics",
    "delete_topics",
    "fetch_jars",
    "find_java",
    "libs_dir",
    "main",
    "make_tls_files",
    "unsecured_jwt",
]

KAFKA_VERSION: Final = "4.1.1"
#: When set, tests and :func:`broker_from_env` use this broker and start nothing.
ENV_BOOTSTRAP: Final = "MODSTREAM_KAFKA_BOOTSTRAP"
#: Root of the jar cache; defaults to ``~/.cache/modstream``.
ENV_CACHE_DIR: Final = "MODSTREAM_CACHE_DIR"

_HERE: Final = Path(__file__).resolve().parent
_POM: Final = _HERE / "pom.xml"
_LOG4J_CONFIG: Final = _HERE / "log4j2.properties"
_MARKER: Final = ".fetched"
_PROBE_TOPIC: Final = "modstream-local-probe"
_HEAP_OPTS: Final = ("-Xmx512m", "-Xms256m")
_LOG_TAIL_BYTES: Final = 20000
# Short waits used *inside* deadline-bounded polling loops, never as synchronisation.
_POLL_S: Final = 0.2


class KafkaLocalError(RuntimeError):
    """Base class for everything this module raises on purpose."""


class ToolMissingError(KafkaLocalError):
    """``java`` or ``mvn`` is not installed; raised early with an actionable message."""


class KafkaStartError(KafkaLocalError):
    """The broker could not be formatted, died, or was not ready before the deadline.

    The message embeds the tail of the broker log because that is where the
    actual reason (bad config, port in use, ...) is; a bare timeout is useless.
    """


# --------------------------------------------------------------------------- jars


def cache_dir() -> Path:
    """Return the jar cache root (``$MODSTREAM_CACHE_DIR`` or ``~/.cache/modstream``).

    Kept outside the git checkout so ~45 MB of jars never get committed and are
    shared between worktrees.
    """
    root = os.environ.get(ENV_CACHE_DIR, "").strip()
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "modstream"
    return base / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    """Return the directory the broker classpath is copied into."""
    return cache_dir() / "libs"


def _pom_digest() -> str:
    # Stored in the marker so that editing pom.xml (e.g. a version bump)
    # invalidates the cache instead of silently running stale jars.
    return hashlib.sha256(_POM.read_bytes()).hexdigest()


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissingError(f"'{tool}' not found on PATH: {hint}")
    return path


def find_java() -> str:
    """Locate the ``java`` launcher, preferring ``$JAVA_HOME`` like Kafka's own scripts."""
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return _require(
        "java", "install a JDK/JRE >= 17 (e.g. openjdk-17-jre-headless) or set JAVA_HOME"
    )


def fetch_jars(*, force: bool = False) -> Path:
    """Resolve the broker classpath with Maven once and return the libs directory.

    Idempotent and safe to call concurrently (e.g. from pytest-xdist workers):
    a file lock serialises fetches, and a marker written only after a
    successful copy means an interrupted fetch is redone on the next call.
    """
    target = cache_dir()
    libs = target / "libs"
    marker = target / _MARKER
    target.mkdir(parents=True, exist_ok=True)
    digest = _pom_digest()
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and marker.is_file() and marker.read_text().strip() == digest:
            return libs
        mvn = _require("mvn", "install Apache Maven 3.x (it downloads the Kafka jars)")
        find_java()  # fail now with a clear message rather than after the download
        marker.unlink(missing_ok=True)
        staging = target / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(_POM),
            "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaLocalError(
                f"mvn failed to resolve Kafka {KAFKA_VERSION} jars (rc={result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text(digest + "\n")
    return libs


# ------------------------------------------------------------------------- topics


def _admin(bootstrap: str, timeout_s: float = 30.0) -> Any:
    ms = max(1000, int(timeout_s * 1000))
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="modstream-kafka-local",
        bootstrap_timeout_ms=ms,
        request_timeout_ms=ms,
    )


def create_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int = 1,
    *,
    timeout_s: float = 30.0,
) -> None:
    """Create topics (replication factor 1) and wait until every partition has a leader.

    Already-existing topics are not an error, so fixtures can call this
    unconditionally; waiting for leaders avoids the classic first-produce
    ``NotLeaderForPartition`` flake on a freshly created KRaft topic.
    """
    if not names:
        return
    spec = {n: {"num_partitions": partitions, "replication_factor": 1} for n in names}
    with _admin(bootstrap, timeout_s) as admin:
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        for topic in result["topics"]:
            code = int(topic["error_code"])
            if code not in (0, TopicAlreadyExistsError.errno):
                raise for_code(code)(f"{topic['name']}: {topic.get('error_message')}")
        admin.wait_for_topics(list(names), timeout_ms=int(timeout_s * 1000))


def delete_topics(bootstrap: str, names: Sequence[str], *, timeout_s: float = 30.0) -> None:
    """Delete topics, ignoring ones that do not exist, and wait until they are gone.

    Waiting matters because KRaft deletion is asynchronous: re-creating a name
    right after an un-awaited delete can fail with ``TopicAlreadyExists``.
    """
    if not names:
        return
    with _admin(bootstrap, timeout_s) as admin:
        result = admin.delete_topics(
            list(names), timeout_ms=int(timeout_s * 1000), raise_errors=False
        )
        for topic in result["topics"]:
            code = int(topic["error_code"])
            if code not in (0, UnknownTopicOrPartitionError.errno):
                raise for_code(code)(f"{topic['name']}: {topic.get('error_message')}")
        deadline = time.monotonic() + timeout_s
        wanted = set(names)
        while wanted & set(admin.list_topics()):
            if time.monotonic() >= deadline:
                raise KafkaLocalError(f"topics still present after {timeout_s}s: {sorted(wanted)}")
            time.sleep(_POLL_S)


# ------------------------------------------------------------------------- broker


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is known so the OS cannot hand out
    # the same port twice; the remaining bind race with other processes is
    # handled by LocalKafka.start() retrying on "Address already in use".
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _condense(text: str, max_lines: int = 40) -> str:
    """Drop Java stack frames and keep the last ``max_lines`` lines.

    Kafka start failures are 80+ lines of ``at ...`` frames around the one
    line that matters ("Address already in use", "Invalid value ..."); the
    exception and ``Caused by`` lines are what a developer needs to read.
    """
    lines = [
        ln for ln in text.splitlines() if not ln.startswith(("\tat ", "\t... ")) and ln.strip()
    ]
    return "\n".join(lines[-max_lines:])


def _cluster_id() -> str:
    # Same format as Kafka's Uuid.randomUuid(): url-safe base64 of 16 random
    # bytes without padding, re-drawn if it starts with '-' (looks like a CLI flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class LocalKafka:
    """A single-node KRaft Kafka broker (broker+controller in one JVM) on loopback.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. By default
    all state lives in a fresh temp dir deleted on stop. Pass ``log_dir`` to
    keep state in a caller-owned directory (never deleted), and use
    ``stop(keep_data=True)`` then ``start()`` to restart the *same* broker on the
    same ports with its data intact (e.g. to test recovery / committed offsets).
    """

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        startup_timeout: float = 90.0,
        extra_config: Mapping[str, str] | None = None,
        extra_listeners: Mapping[str, str] | None = None,
        format_args: Sequence[str] = (),
    ) -> None:
        """Configure, without starting anything.

        Args:
            log_dir: caller-owned directory for data, ``server.properties`` and
                ``broker.log``; created if missing, never deleted by :meth:`stop`.
            port: fixed PLAINTEXT port (default: a free one picked at start).
            controller_port: fixed KRaft controller port (default: free one).
            startup_timeout: seconds :meth:`start` waits for a usable broker.
            extra_config: additional/overriding ``server.properties`` entries.
            extra_listeners: more listeners, ``{name: security protocol}`` (e.g.
                ``{"SASL_SSL": "SASL_SSL"}``), each on a free port picked at start;
                their per-listener settings go in ``extra_config``.
            format_args: extra arguments of ``StorageTool format`` (fresh storage only).
        """
        self._owns_dir = log_dir is None
        self._root: Path | None = None if log_dir is None else Path(log_dir).resolve()
        self._user_ports = (port, controller_port)
        self._port, self._cport = self._user_ports
        self.startup_timeout = startup_timeout
        self._extra = dict(extra_config or {})
        self._extra_listeners = dict(extra_listeners or {})
        self._listener_ports: dict[str, int] = {}
        self._format_args = list(format_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False
        #: Seconds the last successful :meth:`start` took (format + JVM boot + probe).
        self.last_start_seconds: float | None = None

    # -- introspection ---------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` for clients; available once ports are assigned by start()."""
        if self._port is None:
            raise KafkaLocalError("broker has no port yet; call start() first")
        return f"127.0.0.1:{self._port}"

    def listener_bootstrap(self, name: str) -> str:
        """``"127.0.0.1:PORT"`` of an extra listener (see ``extra_listeners``)."""
        if name not in self._listener_ports:
            raise KafkaLocalError(f"no listener {name!r} (yet): {sorted(self._extra_listeners)}")
        return f"127.0.0.1:{self._listener_ports[name]}"

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM (also its process-group id), or None when not started."""
        return None if self._proc is None else self._proc.pid

    @property
    def workdir(self) -> Path | None:
        """Directory with ``data/``, ``server.properties`` and ``broker.log``."""
        return self._root

    @property
    def log_file(self) -> Path | None:
        """The broker's combined stdout/stderr log (quiet: WARN level)."""
        return None if self._root is None else self._root / "broker.log"

    def is_running(self) -> bool:
        """True while the broker JVM process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the JVM exits (or ``timeout`` passes); return its exit code or None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """Return the end of ``broker.log`` (for error messages)."""
        path = self.log_file
        if path is None or not path.is_file():
            return "<no broker log>"
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", "replace")

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> LocalKafka:
        """Start the broker; see :meth:`start`."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker and remove its temp dir."""
        self.stop()

    def start(self) -> LocalKafka:
        """Format storage if needed, launch the JVM and wait until topics can be created.

        Returns self. Raises :class:`KafkaStartError` (with the broker log tail)
        if the JVM dies or is not usable within ``startup_timeout`` seconds; the
        JVM is killed in that case, so a failed start leaks nothing.
        """
        if self.is_running():
            return self
        t0 = time.monotonic()
        java = find_java()
        libs = fetch_jars()
        fresh_dir = self._root is None
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="modstream-kafka-"))
        self._root.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            # Normal interpreter exit must never leave an orphan JVM or temp dir.
            atexit.register(self._atexit_cleanup)
            self._atexit_registered = True
        data = self._root / "data"
        # Only a brand-new broker on auto-picked ports may be retried with other
        # ports; kept data or caller-chosen ports must come back unchanged.
        fresh = not (data / "meta.properties").is_file()
        attempts = 3 if fresh and self._port is None and self._cport is None else 1
        try:
            for attempt in range(1, attempts + 1):
                if self._port is None or self._cport is None:
                    picked = _free_ports(2)
                    self._port = self._port or picked[0]
                    self._cport = self._cport or picked[1]
                if set(self._listener_ports) != set(self._extra_listeners):
                    ports = _free_ports(len(self._extra_listeners))
                    self._listener_ports = dict(zip(self._extra_listeners, ports, strict=True))
                try:
                    self._launch(java, libs, deadline=t0 + self.startup_timeout)
                except KafkaStartError as err:
                    # Another process may have grabbed a picked port between
                    # _free_ports() and the JVM binding it: re-pick and retry.
                    if attempt < attempts and "Address already in use" in str(err):
                        self._port, self._cport = self._user_ports
                        self._listener_ports = {}
                        shutil.rmtree(data, ignore_errors=True)
                        continue
                    raise
                break
        except BaseException:
            if fresh_dir:  # __exit__ never runs when __enter__ fails: clean up here
                self.stop()
            raise
        self.last_start_seconds = time.monotonic() - t0
        return self

    def _write_config(self, data: Path) -> Path:
        assert self._root is not None and self._port is not None and self._cport is not None
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self._cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self._port},CONTROLLER://127.0.0.1:{self._cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self._port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        if self._extra_listeners:
            extra = [f"{n}://127.0.0.1:{self._listener_ports[n]}" for n in self._extra_listeners]
            props["listeners"] = ",".join([props["listeners"], *extra])
            props["advertised.listeners"] = ",".join([props["advertised.listeners"], *extra])
            props["listener.security.protocol.map"] = ",".join(
                [props["listener.security.protocol.map"]]
                + [f"{n}:{proto}" for n, proto in self._extra_listeners.items()]
            )
        props.update(self._extra)
        path = self._root / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _launch(self, java: str, libs: Path, *, deadline: float) -> None:
        assert self._root is not None
        data = self._root / "data"
        config = self._write_config(data)
        classpath = f"{libs}{os.sep}*"
        jvm = [java, *_HEAP_OPTS, "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={_LOG4J_CONFIG}", "-cp", classpath]  # fmt: skip
        if not (data / "meta.properties").is_file():
            # Fresh data dir: KRaft refuses to start on unformatted storage.
            # Static quorum (controller.quorum.voters), so no --standalone flag.
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config),
                 *self._format_args],
                capture_output=True, text=True, check=False, cwd=self._root,
                timeout=max(1.0, deadline - time.monotonic()),
            )  # fmt: skip
            if fmt.returncode != 0:
                raise KafkaStartError(
                    f"StorageTool format failed:\n{_condense(fmt.stdout + fmt.stderr)}"
                )
        assert self.log_file is not None
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self._root,
                # Own process group: terminal Ctrl-C does not hit the JVM
                # directly (we stop it in order), and stop() can killpg it.
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(deadline)
        except BaseException:
            self._terminate(timeout=10.0)
            raise

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self._port is not None
        last_error = "broker port not open yet"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise KafkaStartError(
                    f"broker JVM exited with code {rc}:\n{_condense(self.log_tail())}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaStartError(
                    f"broker not ready after {self.startup_timeout:.0f}s ({last_error}):\n"
                    f"{_condense(self.log_tail())}"
                )
            # Cheap TCP check first: each failed KafkaAdminClient bootstrap in
            # kafka-python 3.x leaves a daemon I/O thread behind.
            if _port_open(self._port):
                try:
                    create_topics(self.bootstrap, [_PROBE_TOPIC], timeout_s=min(10.0, remaining))
                    return
                except (KafkaError, OSError) as err:
                    last_error = f"{type(err).__name__}: {err}"
            # Wait on the process rather than sleeping: returns at once if it dies.
            self.wait(timeout=min(_POLL_S, max(0.0, remaining)))

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM the whole group -> Kafka's controlled shutdown; SIGKILL if it hangs.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None

    def stop(self, timeout: float = 20.0, *, keep_data: bool = False) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL after ``timeout`` s). Idempotent.

        Removes the temp dir unless ``keep_data`` is true or the caller supplied
        ``log_dir``. With ``keep_data=True`` ports and data are retained so a
        subsequent :meth:`start` brings the same broker back.
        """
        self._terminate(timeout)
        if keep_data:
            return
        if self._owns_dir and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        self._port, self._cport = self._user_ports
        self._listener_ports = {}
        if self._atexit_registered:
            atexit.unregister(self._atexit_cleanup)
            self._atexit_registered = False

    def _atexit_cleanup(self) -> None:
        self.stop(timeout=10.0)

    # -- topic helpers ---------------------------------------------------------
    def create_topics(self, names: Sequence[str], partitions: int = 1) -> None:
        """Create topics on this broker; see module-level :func:`create_topics`."""
        create_topics(self.bootstrap, names, partitions)

    def delete_topics(self, names: Sequence[str]) -> None:
        """Delete topics on this broker; see module-level :func:`delete_topics`."""
        delete_topics(self.bootstrap, names)


# ------------------------------------------------------------------ secure broker

#: The secure broker's super user (besides ANONYMOUS, the PLAINTEXT listener's principal).
SECURE_SUPER_USER: Final = "admin"
SCRAM_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_CERT_DAYS: Final = "2"


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate (CN = the principal's name on the SSL listener) and its key,
    plain and encrypted (PKCS#8, AES-256) with ``key_password``."""

    name: str
    cert: Path
    key: Path
    encrypted_key: Path
    key_password: str


@dataclass(frozen=True)
class TlsFiles:
    """Throw-away PKI for the secure broker, made with ``openssl`` at test time.

    ``ca`` signed the broker certificate (SAN ``IP:127.0.0.1`` only, so connecting by
    the name ``localhost`` is a host-name mismatch) and every client in ``clients``;
    ``other_ca`` is unrelated (a client trusting only it must refuse the broker) and
    signed ``untrusted_client`` (a certificate the broker must refuse).
    """

    directory: Path
    ca: Path
    other_ca: Path
    broker_keystore: Path  # PKCS12: broker key + certificate + CA
    keystore_password: str
    clients: dict[str, ClientCertificate]
    untrusted_client: ClientCertificate


def _openssl(*args: str, cwd: Path) -> None:
    openssl = _require("openssl", "install OpenSSL (it makes the test certificates)")
    done = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise KafkaLocalError(f"openssl {args[0]} failed: {done.stderr.strip()[-2000:]}")


def _new_key(cwd: Path, name: str) -> str:
    key = f"{name}.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", key, cwd=cwd)  # fmt: skip
    return key


def _make_ca(cwd: Path, name: str) -> tuple[str, str]:
    key = _new_key(cwd, name)
    cert = f"{name}.pem"
    _openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", _CERT_DAYS,
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)  # fmt: skip
    return cert, key


def _sign(cwd: Path, name: str, subject: str, ca: tuple[str, str], extensions: str) -> str:
    key = _new_key(cwd, name)
    _openssl("req", "-new", "-key", key, "-out", f"{name}.csr", "-subj", subject, cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    cert = f"{name}.pem"
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1],
             "-CAcreateserial", "-out", cert, "-days", _CERT_DAYS,
             "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip
    return cert


def _client(cwd: Path, name: str, ca: tuple[str, str], file_name: str) -> ClientCertificate:
    # Most specific last, so Java's RFC 2253 name reads "CN=<name>,O=modstream-test".
    cert = _sign(cwd, file_name, f"/O=modstream-test/CN={name}", ca,
                 "extendedKeyUsage=clientAuth\n")  # fmt: skip
    password = "key-" + uuid.uuid4().hex
    encrypted = f"{file_name}-encrypted.key"
    _openssl("pkcs8", "-topk8", "-in", f"{file_name}.key", "-out", encrypted,
             "-v2", "aes-256-cbc", "-passout", f"pass:{password}", cwd=cwd)  # fmt: skip
    return ClientCertificate(name, cwd / cert, cwd / f"{file_name}.key", cwd / encrypted, password)


def make_tls_files(
    directory: str | os.PathLike[str], client_names: Sequence[str] = ("worker", "admin")
) -> TlsFiles:
    """Make a CA, the broker's keystore and client certificates in ``directory``."""
    cwd = Path(directory)
    cwd.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(cwd, "modstream-test-ca")
    other = _make_ca(cwd, "unrelated-ca")
    broker = _sign(cwd, "broker", "/CN=modstream-test-broker", ca,
                   "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")  # fmt: skip
    store_password = "store-" + uuid.uuid4().hex
    _openssl("pkcs12", "-export", "-in", broker, "-inkey", "broker.key", "-certfile", ca[0],
             "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{store_password}",
             cwd=cwd)  # fmt: skip
    clients = {name: _client(cwd, name, ca, f"client-{name}") for name in client_names}
    untrusted = _client(cwd, client_names[0], other, "untrusted-client")
    for path in cwd.iterdir():
        if path.suffix == ".key":
            path.chmod(0o600)
    return TlsFiles(cwd, cwd / ca[0], cwd / other[0], cwd / "broker.p12", store_password,
                    clients, untrusted)  # fmt: skip


def unsecured_jwt(subject: str, lifetime_s: float, *, issued_at: float | None = None) -> str:
    """An unsigned OAUTHBEARER token (``alg: none``), which the broker's default (test
    only) validator accepts; the principal is ``User:<subject>``."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    now = time.time() if issued_at is None else issued_at
    claims = {"sub": subject, "iat": int(now), "exp": int(now + lifetime_s)}
    return f"{part({'alg': 'none'})}.{part(claims)}."


class SecureLocalKafka(LocalKafka):
    """A LocalKafka with TLS, SASL and ACLs, as production clusters run.

    Listeners, all on loopback:

    - ``SASL_SSL``: SCRAM-SHA-512, SCRAM-SHA-256 and OAUTHBEARER (unsigned test tokens,
      see :func:`unsecured_jwt`); ``oauth_reauth_ms`` makes OAUTHBEARER sessions expire
      so clients must re-authenticate (KIP-368).
    - ``SSL``: requires a client certificate signed by ``tls.ca``; the principal is its
      CN (``User:worker``).
    - ``PLAINTEXT``: for the test harness (topics, ACLs, reading outputs); its principal
      ``User:ANONYMOUS`` is a super user, as is ``User:admin``.

    The KRaft ``StandardAuthorizer`` denies everything else unless an ACL allows it.
    SCRAM users are added with :meth:`add_scram_user` once the broker runs.
    """

    def __init__(self, tls: TlsFiles, *, oauth_reauth_ms: int | None = None, **kwargs: Any):
        self.tls = tls
        config: dict[str, str] = {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:ANONYMOUS;User:{SECURE_SUPER_USER}",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(tls.broker_keystore),
            "ssl.keystore.password": tls.keystore_password,
            "ssl.key.password": tls.keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            # User:<CN> rather than the whole distinguished name.
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+),.*$/$1/,DEFAULT",
            "sasl.enabled.mechanisms": ",".join([*SCRAM_MECHANISMS, "OAUTHBEARER"]),
            "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule "
                f'required unsecuredLoginStringClaim_sub="{SECURE_SUPER_USER}";'
            ),
        }
        for mechanism in SCRAM_MECHANISMS:
            config[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        if oauth_reauth_ms is not None:
            config["listener.name.sasl_ssl.oauthbearer.connections.max.reauth.ms"] = str(
                oauth_reauth_ms
            )
        config.update(kwargs.pop("extra_config", None) or {})
        super().__init__(
            extra_config=config,
            extra_listeners={"SASL_SSL": "SASL_SSL", "SSL": "SSL"},
            **kwargs,
        )

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return self.listener_bootstrap("SASL_SSL")

    @property
    def ssl_bootstrap(self) -> str:
        return self.listener_bootstrap("SSL")

    def add_scram_user(
        self, name: str, password: str, mechanisms: Sequence[str] = SCRAM_MECHANISMS
    ) -> None:
        """Create or update a SCRAM user (through the PLAINTEXT listener, as super user)."""
        from kafka.admin import UserScramCredentialUpsertion

        with _admin(self.bootstrap) as admin:
            for mechanism in mechanisms:  # one request per mechanism: the broker's rule
                errors = admin.alter_user_scram_credentials(
                    [UserScramCredentialUpsertion(name, mechanism, password)]
                )
                failed = {user: error for user, error in errors.items() if error}
                if failed:
                    raise KafkaLocalError(f"could not set {mechanism} credentials: {failed}")


@contextlib.contextmanager
def broker_from_env(**kwargs: Any) -> Iterator[str]:
    """Yield a bootstrap address: ``$MODSTREAM_KAFKA_BOOTSTRAP`` if set, else a fresh LocalKafka.

    Lets CI or a developer point the test-suite at an existing broker (and skip
    the JVM start entirely) without changing any test. ``kwargs`` go to
    :class:`LocalKafka`.
    """
    external = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if external:
        yield external
        return
    with LocalKafka(**kwargs) as kafka:
        yield kafka.bootstrap


# ---------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    # SIGTERM behaves like Ctrl-C so that a signal arriving at any point
    # (even mid-start) unwinds through the finally and stops the JVM. SIGINT is
    # set explicitly too: shells start background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    options = {"log_dir": args.log_dir, "port": args.port, "startup_timeout": args.startup_timeout}
    kafka = (
        SecureLocalKafka(make_tls_files(args.secure), **options)
        if args.secure
        else LocalKafka(**options)
    )
    try:
        kafka.start()
        print(f"bootstrap={kafka.bootstrap}", flush=True)
        if isinstance(kafka, SecureLocalKafka):
            print(f"sasl_ssl_bootstrap={kafka.sasl_ssl_bootstrap}", flush=True)
            print(f"ssl_bootstrap={kafka.ssl_bootstrap}", flush=True)
            print(f"tls_dir={kafka.tls.directory}", flush=True)
        print(f"started in {kafka.last_start_seconds:.1f}s, log: {kafka.log_file}", file=sys.stderr)
        rc = kafka.wait()
        print(f"broker exited (rc={rc}):\n{_condense(kafka.log_tail())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except KafkaLocalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not abort cleanup
        kafka.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="kafka_local.py",
        description=f"Local single-node Apache Kafka {KAFKA_VERSION} (KRaft).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve the broker jars into the cache (needs mvn)")
    run = sub.add_parser("run", help="start a broker, print bootstrap=HOST:PORT, run until SIGTERM")
    run.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: free)")
    run.add_argument("--log-dir", default=None, help="persistent data dir (default: temp)")
    run.add_argument("--startup-timeout", type=float, default=90.0, metavar="SECONDS")
    run.add_argument(
        "--secure",
        metavar="TLS_DIR",
        default=None,
        help="also SASL_SSL and SSL (client certificate) listeners with ACLs; the CA and "
        "client certificates are written to TLS_DIR (add SCRAM users with the admin API)",
    )
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            print(fetch_jars())
        except KafkaLocalError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
