"""Kafka connection security: the TLS and SASL settings → kafka-python options.

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

Why a connection was refused (a failed handshake, a missing ACL) is worked out apart, in
worker/refusal.py: that reads the clients' failures, this only configures them.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from kafka.net.sasl.oauth import AbstractTokenProvider

from model.errors import ExitCode, ModstreamError
from worker.setting_names import env_name

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
            f"{env_name(field)}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecuritySettingsError(
            f"{env_name(field)}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; "
            "is it the right file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecuritySettingsError(f"{env_name(field)}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SecuritySettingsError(f"{env_name(field)}: {path} is empty")
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
                f"{env_name('ssl_cafile')}: cannot load CA certificates from "
                f"{settings.ssl_cafile}: {_reason(exc)}"
            ) from None
    else:
        context.load_default_certs()
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        for field in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(settings, field)
            if not path.is_file():
                raise SecuritySettingsError(f"{env_name(field)}: {path} is not a readable file")
        password = _key_password(settings)

        def give_password() -> bytes:
            # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
            if password is None:
                raise SecuritySettingsError(
                    f"{env_name('ssl_keyfile')}: {settings.ssl_keyfile} is encrypted: set "
                    f"{env_name('ssl_key_password')} or {env_name('ssl_key_password_file')}"
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
            f"{env_name('ssl_keyfile')}: cannot decrypt {settings.ssl_keyfile}: check "
            f"{env_name('ssl_key_password')} / {env_name('ssl_key_password_file')}"
        )
    if "KEY_VALUES_MISMATCH" in reason:
        return (
            f"{env_name('ssl_keyfile')}: {settings.ssl_keyfile} is not the key of the "
            f"certificate in {env_name('ssl_certfile')} ({settings.ssl_certfile})"
        )
    return (
        f"{env_name('ssl_certfile')} / {env_name('ssl_keyfile')}: cannot load the client "
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
                    f"{env_name('sasl_oauth_token_file')}: cannot read {self._path}: "
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
        setting=env_name("ssl_check_hostname"),
        risk="any certificate the CA signed is accepted for any broker address",
    )
