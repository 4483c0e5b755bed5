"""Kafka connection security: settings → kafka-python options, and why a connection failed.

1. `kafka_security_options` turns the TLS and SASL settings into keyword arguments for
   every Kafka client (consumer, producer, admin). TLS goes in as one `ssl.SSLContext`
   built here, so the CA, the client certificate and host-name verification are checked
   the same way for every client, and a file that cannot be used is refused at start
   (`SecuritySettingsError`, exit 2, naming the setting) rather than on each reconnect.
2. Secrets come from the environment or from files (`*_FILE` settings, e.g. a mounted
   Kubernetes Secret). A file's one trailing newline is dropped; nothing read is logged.
3. OAUTHBEARER reads its token from a file through `FileTokenProvider`, which re-reads the
   file whenever it changes: a rotated (projected) token is used by the next connection
   and by kafka-python's re-authentication (KIP-368) of connections already open.
4. kafka-python reports a failed handshake only as a bootstrap timeout. `HandshakeFailures`
   records the failures it logs while the clients start, and `explain_refusal` turns them
   into a sentence naming the cause (untrusted certificate, host-name mismatch, client
   certificate refused, SASL credentials refused) and the setting to check.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from kafka.net.sasl.oauth import AbstractTokenProvider

from model.errors import ExitCode, ModstreamError

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = structlog.get_logger("modstream.security")

# Passwords, keys and tokens are small; a larger "secret" file is a wrong path.
MAX_SECRET_FILE_BYTES = 64 * 1024

_warned_hostname_off: set[str] = set()
_warning_lock = threading.Lock()


class SecuritySettingsError(ModstreamError):
    """A TLS file or a secret file cannot be used; the message names the setting."""

    exit_code = ExitCode.USAGE


def _env(field: str) -> str:
    return f"MODSTREAM_{field.upper()}"


def read_secret_file(path: Path, field: str) -> str:
    """The secret in `path` (the file named by setting `field`), without its trailing newline.

    Files written with `echo` end in a newline that is not part of the secret; Kubernetes
    Secrets hold exactly the bytes given. Only one trailing newline is dropped.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SecuritySettingsError(
            f"{_env(field)}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecuritySettingsError(
            f"{_env(field)}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; "
            "is it the right file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecuritySettingsError(f"{_env(field)}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SecuritySettingsError(f"{_env(field)}: {path} is empty")
    return text


def sasl_password(settings: WorkerSettings) -> str | None:
    """The SASL password from MODSTREAM_SASL_PASSWORD or MODSTREAM_SASL_PASSWORD_FILE."""
    if settings.sasl_password is not None:
        return settings.sasl_password.get_secret_value()
    if settings.sasl_password_file is not None:
        return read_secret_file(settings.sasl_password_file, "sasl_password_file")
    return None


def _key_password(settings: WorkerSettings) -> str | None:
    if settings.ssl_key_password is not None:
        return settings.ssl_key_password.get_secret_value()
    if settings.ssl_key_password_file is not None:
        return read_secret_file(settings.ssl_key_password_file, "ssl_key_password_file")
    return None


def ssl_context(settings: WorkerSettings) -> ssl.SSLContext:
    """The TLS context of every client: TLS ≥ 1.2, the broker certificate verified against
    MODSTREAM_SSL_CAFILE (else the system's CAs), its host name checked unless switched
    off, and the client certificate presented when one is set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.ssl_cafile is not None:
        try:
            context.load_verify_locations(cafile=str(settings.ssl_cafile))
        except (OSError, ssl.SSLError) as exc:
            raise SecuritySettingsError(
                f"{_env('ssl_cafile')}: cannot load CA certificates from "
                f"{settings.ssl_cafile}: {_reason(exc)}"
            ) from None
    else:
        context.load_default_certs()
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        for field in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(settings, field)
            if not path.is_file():
                raise SecuritySettingsError(f"{_env(field)}: {path} is not a readable file")
        password = _key_password(settings)

        def give_password() -> bytes:
            # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
            if password is None:
                raise SecuritySettingsError(
                    f"{_env('ssl_keyfile')}: {settings.ssl_keyfile} is encrypted: set "
                    f"{_env('ssl_key_password')} or {_env('ssl_key_password_file')}"
                )
            return password.encode("utf-8")

        try:
            context.load_cert_chain(
                certfile=str(settings.ssl_certfile),
                keyfile=str(settings.ssl_keyfile),
                password=give_password,
            )
        except SecuritySettingsError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise SecuritySettingsError(_cert_chain_problem(settings, exc)) from None
    return context


def _cert_chain_problem(settings: WorkerSettings, exc: BaseException) -> str:
    reason = _reason(exc)
    files = f"{settings.ssl_certfile} / {settings.ssl_keyfile}"
    if "BAD_DECRYPT" in reason or (_is_encrypted_key(settings.ssl_keyfile) and "PEM" in reason):
        # OpenSSL 3 reports a wrong password as a bare "PEM lib" error.
        return (
            f"{_env('ssl_keyfile')}: cannot decrypt {settings.ssl_keyfile}: check "
            f"{_env('ssl_key_password')} / {_env('ssl_key_password_file')}"
        )
    if "KEY_VALUES_MISMATCH" in reason:
        return (
            f"{_env('ssl_keyfile')}: {settings.ssl_keyfile} is not the key of the "
            f"certificate in {_env('ssl_certfile')} ({settings.ssl_certfile})"
        )
    return (
        f"{_env('ssl_certfile')} / {_env('ssl_keyfile')}: cannot load the client "
        f"certificate and key ({files}): {reason}"
    )


def _is_encrypted_key(path: Path | None) -> bool:
    """PKCS#8 ("ENCRYPTED PRIVATE KEY") and traditional ("Proc-Type: 4,ENCRYPTED") PEM."""
    if path is None:
        return False
    try:
        with path.open("rb") as handle:
            return b"ENCRYPTED" in handle.read(4096)
    except OSError:
        return False


def _reason(exc: BaseException) -> str:
    """An OpenSSL error's short reason; never the file's content."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        return f"{getattr(exc, 'library', None) or 'SSL'}: {reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens read from a file, re-read whenever the file changes.

    Kubernetes replaces a projected token by swapping a symlink, so the file's identity
    (device, inode), size and modification time are compared on every call, which
    kafka-python makes once per authentication (a new connection, or a re-authentication
    before the broker's session lifetime ends). A stat costs microseconds.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        with self._lock:
            try:
                info = os.stat(self._path)
            except OSError as exc:
                raise SecuritySettingsError(
                    f"{_env('sasl_oauth_token_file')}: cannot read {self._path}: "
                    f"{exc.strerror or type(exc).__name__}"
                ) from None
            stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            if stamp != self._stamp:
                self._token = read_secret_file(self._path, "sasl_oauth_token_file").strip()
                self._stamp = stamp
                log.info("oauth_token_read", path=str(self._path))
            return self._token


def kafka_security_options(settings: WorkerSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for the security settings (see the module doc)."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        options["ssl_context"] = ssl_context(settings)
        if not settings.ssl_check_hostname:
            _warn_hostname_unchecked(settings)
    mechanism = settings.sasl_mechanism
    if mechanism == "OAUTHBEARER":
        assert settings.sasl_oauth_token_file is not None  # the settings require it
        provider = FileTokenProvider(settings.sasl_oauth_token_file)
        provider.token()  # an unreadable file is refused now, not on every reconnect
        options["sasl_mechanism"] = mechanism
        options["sasl_oauth_token_provider"] = provider
    elif mechanism is not None:
        options["sasl_mechanism"] = mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = sasl_password(settings)
    return options


def _warn_hostname_unchecked(settings: WorkerSettings) -> None:
    with _warning_lock:
        if settings.kafka_bootstrap in _warned_hostname_off:
            return
        _warned_hostname_off.add(settings.kafka_bootstrap)
    log.warning(
        "tls_hostname_verification_disabled",
        bootstrap=settings.kafka_bootstrap,
        setting=_env("ssl_check_hostname"),
        risk="any certificate the CA signed is accepted for any broker address",
    )


# -- why a connection failed -----------------------------------------------------------


class HandshakeFailures(logging.Handler):
    """Collects the exceptions kafka-python logs while its clients connect.

    kafka-python retries a failed connection until its bootstrap deadline and then raises
    a bare timeout; the real cause (an `ssl.SSLCertVerificationError`, a
    `SaslAuthenticationFailedError`) only reaches its log records, as an argument or as
    `exc_info`. Only exception objects are kept, never message text.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        # The latest failure per kind, oldest first: one refused login among many
        # "socket disconnected" retries must not be crowded out.
        self._latest: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    @property
    def failures(self) -> list[BaseException]:
        with self._lock:
            return list(self._latest.values())

    def emit(self, record: logging.LogRecord) -> None:
        found: list[BaseException] = []
        args = record.args if isinstance(record.args, tuple) else ()
        found.extend(arg for arg in args if isinstance(arg, BaseException))
        if record.exc_info and record.exc_info[1] is not None:
            found.append(record.exc_info[1])
        # Some failures are logged by name only (e.g. "SaslHandshake failed: %s" with the
        # class name), and the broker may close the socket before the exception travels
        # further: keep the name, never the message.
        found.extend(
            LoggedFailure(kind)
            for kind in _NAMED_IN_MESSAGES
            if any(isinstance(arg, str) and arg == kind for arg in args)
        )
        with self._lock:
            for exc in found:
                for cause in _causes(exc):
                    kind = f"{_kind(cause)}:{getattr(cause, 'reason', '')}"
                    self._latest.pop(kind, None)
                    self._latest[kind] = cause
            while len(self._latest) > 32:  # bounded, whatever the client logs
                del self._latest[next(iter(self._latest))]


class LoggedFailure(Exception):
    """A failure kafka-python logged by its class name only."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


_NAMED_IN_MESSAGES = ("UnsupportedSaslMechanismError", "SaslAuthenticationFailedError")


def _kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, LoggedFailure) else type(exc).__name__


@contextmanager
def recording_handshake_failures() -> Iterator[HandshakeFailures]:
    """Records kafka-python's connection failures for the duration of the block."""
    handler = HandshakeFailures()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(handler)
    try:
        yield handler
    finally:
        kafka_log.removeHandler(handler)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes, and exceptions wrapped in its args (KafkaConnectionError(e))."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)


# X509_V_ERR_* codes that mean "the certificate is not for this host".
_HOSTNAME_MISMATCH_CODES = frozenset({62, 64})
# TLS alerts a broker sends when it requires a client certificate and got none or a bad one.
_CLIENT_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "HANDSHAKE_FAILURE",
)


def explain_refusal(settings: WorkerSettings, failures: list[BaseException]) -> str | None:
    """A sentence naming why the broker was not usable and the setting to check, from
    the recorded failures (latest first); None when none of them says."""
    for failure in reversed(failures):
        for exc in _causes(failure):
            reason = _explain_one(settings, exc)
            if reason is not None:
                return reason
    return None


def _explain_one(settings: WorkerSettings, exc: BaseException) -> str | None:
    name = _kind(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _HOSTNAME_MISMATCH_CODES:
            return (
                "the broker's TLS certificate does not name the host connected to "
                f"({exc.verify_message}): use a bootstrap address its certificate names "
                f"(MODSTREAM_KAFKA_BOOTSTRAP); {_env('ssl_check_hostname')}=false "
                "switches the check off, with a warning"
            )
        return (
            "the broker's TLS certificate is not trusted "
            f"({exc.verify_message}): check {_env('ssl_cafile')} "
            f"({settings.ssl_cafile or 'unset: the system CAs'}) holds the CA that "
            "signed it"
        )
    if isinstance(exc, ssl.SSLError):
        alert = getattr(exc, "reason", None) or ""
        reason = alert.upper()
        if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
            presented = (
                f"the certificate in {_env('ssl_certfile')} ({settings.ssl_certfile})"
                if settings.ssl_certfile is not None
                else f"no client certificate ({_env('ssl_certfile')} and "
                f"{_env('ssl_keyfile')} are unset)"
            )
            return (
                f"the broker refused the TLS client authentication ({alert}); "
                f"this worker presented {presented}: the listener requires one its "
                "truststore accepts"
            )
        if any(r in reason for r in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "UNEXPECTED_EOF")):
            return (
                f"the TLS handshake failed ({alert}): is the listener a TLS one "
                f"(MODSTREAM_SECURITY_PROTOCOL is {settings.security_protocol})?"
            )
        return None
    if name == "UnsupportedSaslMechanismError":
        return (
            f"the broker does not enable SASL {settings.sasl_mechanism} on this "
            "listener: check MODSTREAM_SASL_MECHANISM"
        )
    if name in ("SaslAuthenticationFailedError", "IllegalSaslStateError"):
        if settings.sasl_mechanism == "OAUTHBEARER":
            return (
                "the broker refused the OAUTHBEARER token: check the token in "
                f"{_env('sasl_oauth_token_file')} ({settings.sasl_oauth_token_file}) "
                "is current and meant for this cluster"
            )
        password_from = (
            f"{_env('sasl_password_file')} ({settings.sasl_password_file})"
            if settings.sasl_password_file is not None
            else _env("sasl_password")
        )
        return (
            f"the broker refused the credentials of user {settings.sasl_username!r} during "
            f"SASL {settings.sasl_mechanism} authentication: check MODSTREAM_SASL_USERNAME, "
            f"{password_from} and MODSTREAM_SASL_MECHANISM"
        )
    return None


def refusal_settings_hint(settings: WorkerSettings, reachable: str) -> str:
    """What to check when the handshake failed without a recorded cause."""
    if settings.security_protocol.startswith("SASL_"):
        return (
            f"{reachable} accepts connections but closed them during SASL "
            f"{settings.sasl_mechanism} authentication: check MODSTREAM_SASL_USERNAME "
            f"({settings.sasl_username!r}), MODSTREAM_SASL_PASSWORD and "
            "MODSTREAM_SASL_MECHANISM"
        )
    if settings.security_protocol.endswith("SSL"):
        return (
            f"{reachable} accepts connections but the TLS handshake failed: check "
            f"{_env('ssl_cafile')}, {_env('ssl_certfile')} and that the listener speaks TLS"
        )
    return (
        f"{reachable} accepts connections but no Kafka handshake completed: is it a "
        "Kafka PLAINTEXT listener (MODSTREAM_SECURITY_PROTOCOL)?"
    )


# -- which ACL is missing --------------------------------------------------------------


def missing_right(exc: BaseException | None, settings: WorkerSettings) -> str | None:
    """The ACL an authorization failure says this worker lacks, naming the setting that
    names the resource: e.g. "WRITE on topic 'x' (MODSTREAM_DEAD_LETTER_TOPIC)"."""
    if exc is None:
        return None
    for cause in _causes(exc):
        name = type(cause).__name__
        if name == "GroupAuthorizationFailedError":
            return f"READ on group {settings.group_id!r} (MODSTREAM_GROUP_ID)"
        if name == "TopicAuthorizationFailedError":
            return _topic_right(str(cause), settings)
        if name == "TransactionalIdAuthorizationFailedError":
            return (
                f"WRITE on transactional id {settings.resolved_transactional_id()!r} "
                "(MODSTREAM_TRANSACTIONAL_ID)"
            )
        if name == "ClusterAuthorizationFailedError":
            return "IDEMPOTENT_WRITE on the cluster (brokers before 2.8 require it)"
    return None


def _topic_right(text: str, settings: WorkerSettings) -> str:
    roles = (
        (settings.input_topic, "READ", "input_topic"),
        (settings.output_topic, "WRITE", "output_topic"),
        (settings.dead_letter_topic, "WRITE", "dead_letter_topic"),
    )
    # Whole names only: one topic's name may contain another's ("in", "in-dead").
    named = set(re.findall(r"[A-Za-z0-9._-]+", text))
    for topic, operation, field in roles:
        if topic in named:
            return f"{operation} on topic {topic!r} ({_env(field)})"
    return "READ on the input topic or WRITE on the output topics"


def authorization_hint(exc: BaseException | None, settings: WorkerSettings) -> str:
    """ "; the broker's ACLs deny this worker …" for an authorization failure, else ""."""
    right = missing_right(exc, settings)
    if right is None:
        return ""
    return f"; the broker's ACLs deny this worker {right}: grant it (README: Security)"


def input_topic_unauthorized(consumer: Any, settings: WorkerSettings) -> str | None:
    """Why the consumer has nothing to read when its principal may not read the input topic.

    kafka-python does not raise for a subscribed topic it is denied: it logs, and the
    group hands this member no partitions, which would look like an idle, ready worker.
    Its cluster metadata's `unauthorized_topics` (no I/O) is looked up defensively, so a
    client upgrade degrades to "not checked". While denied, a metadata refresh is
    requested so that a granted ACL is noticed within a poll or two, not after
    `metadata.max.age.ms`.
    """
    cluster = getattr(consumer, "_cluster", None)
    denied = getattr(cluster, "unauthorized_topics", None)
    if not isinstance(denied, set) or settings.input_topic not in denied:
        return None
    request_update = getattr(cluster, "request_update", None)
    if callable(request_update):
        request_update()
    return (
        f"cannot read topic {settings.input_topic!r}: the broker's ACLs deny this worker "
        f"READ on topic {settings.input_topic!r} (MODSTREAM_INPUT_TOPIC): grant it "
        "(README: Security)"
    )
