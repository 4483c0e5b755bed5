"""worker/security.py: TLS and SASL settings become kafka-python options; unusable files
are refused naming the setting; secrets come from env or files and never show."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from tests.conftest import REPO_ROOT, load_kafka_local
from worker.cli import main as cli_main
from worker.security import (
    FileTokenProvider,
    SecuritySettingsError,
    kafka_security_options,
    read_secret_file,
)
from worker.settings import WorkerSettings

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    return load_kafka_local().make_tls_files(tmp_path_factory.mktemp("tls"), ["worker"])


def mtls(tls: Any, **extra: Any) -> WorkerSettings:
    client = tls.clients["worker"]
    options: dict[str, Any] = {
        "security_protocol": "SSL",
        "ssl_cafile": tls.ca,
        "ssl_certfile": client.cert,
        "ssl_keyfile": client.key,
    }
    return WorkerSettings(**(options | extra))


# -- settings --------------------------------------------------------------------------


def test_scram_password_from_a_file_drops_one_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("pa55 word\n")
    settings = WorkerSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="worker",
        sasl_password_file=secret,
    )
    options = settings.kafka_common()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == "pa55 word"
    assert "pa55" not in repr(settings)


def test_a_secret_from_env_and_file_at_once_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("x")
    monkeypatch.setenv("MODSTREAM_SASL_PASSWORD", "y")
    with pytest.raises(ValidationError, match=r"MODSTREAM_SASL_PASSWORD_FILE.*use one"):
        WorkerSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="worker",
            sasl_password_file=secret,
        )


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"security_protocol": "PLAINTEXT", "ssl_cafile": "ca.pem"}, "MODSTREAM_SSL_CAFILE"),
        (
            {"security_protocol": "SSL", "ssl_certfile": "c.pem"},
            "MODSTREAM_SSL_KEYFILE",
        ),
        (
            {"security_protocol": "SSL", "ssl_key_password_file": "p"},
            "MODSTREAM_SSL_KEY_PASSWORD",
        ),
        (
            {"security_protocol": "SSL", "sasl_mechanism": "PLAIN"},
            "MODSTREAM_SASL_MECHANISM",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
            "MODSTREAM_SASL_OAUTH_TOKEN_FILE",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"},
            "MODSTREAM_SASL_USERNAME",
        ),
    ],
)
def test_security_settings_that_cannot_work_are_refused_naming_the_setting(
    settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        WorkerSettings(**settings)


def test_cli_exits_2_naming_the_setting_when_a_secret_file_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", "--security-protocol=SASL_SSL",
         "--sasl-mechanism=SCRAM-SHA-512", "--sasl-username=worker",
         f"--sasl-password-file={missing}", f"--checkpoint-dir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MODSTREAM_")},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "MODSTREAM_SASL_PASSWORD_FILE" in done.stderr and str(missing) in done.stderr


def test_secrets_are_not_command_line_flags_not_even_abbreviated() -> None:
    for flag in ("--ssl-key-password", "--sasl-password"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["worker", flag, "x"])
        assert exit_info.value.code == 2


# -- TLS -------------------------------------------------------------------------------


@needs_openssl
def test_tls_context_verifies_the_broker_and_presents_the_client_certificate(tls: Any) -> None:
    options = kafka_security_options(mtls(tls))
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "modstream-test-ca"),),)
    ]
    assert options["security_protocol"] == "SSL"
    assert "ssl_cafile" not in options, "one context for every client, nothing else"


@needs_openssl
def test_an_encrypted_key_loads_with_its_password_from_env_or_file(
    tls: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = tls.clients["worker"]
    password_file = tmp_path / "key-password"
    password_file.write_text(client.key_password + "\n")
    from_file = mtls(tls, ssl_keyfile=client.encrypted_key, ssl_key_password_file=password_file)
    assert isinstance(kafka_security_options(from_file)["ssl_context"], ssl.SSLContext)
    monkeypatch.setenv("MODSTREAM_SSL_KEY_PASSWORD", client.key_password)
    from_env = mtls(tls, ssl_keyfile=client.encrypted_key)
    assert isinstance(kafka_security_options(from_env)["ssl_context"], ssl.SSLContext)
    assert client.key_password not in repr(from_env)


@needs_openssl
def test_unusable_tls_files_are_refused_naming_the_setting(
    tls: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = tls.clients["worker"]
    encrypted = client.encrypted_key
    cases: list[tuple[WorkerSettings, str]] = [
        (mtls(tls, ssl_cafile=tmp_path / "absent.pem"), "MODSTREAM_SSL_CAFILE"),
        (mtls(tls, ssl_cafile=client.key), "MODSTREAM_SSL_CAFILE"),
        (mtls(tls, ssl_certfile=tmp_path / "absent.pem"), "MODSTREAM_SSL_CERTFILE"),
        (mtls(tls, ssl_keyfile=encrypted), "is encrypted: set MODSTREAM_SSL_KEY_PASSWORD"),
        (mtls(tls, ssl_keyfile=tls.untrusted_client.key), "is not the key of the certificate"),
    ]
    monkeypatch.setenv("MODSTREAM_SSL_KEY_PASSWORD", "wrong-" + client.key_password)
    cases.append((mtls(tls, ssl_keyfile=encrypted), "cannot decrypt"))
    key_text = client.key.read_text()
    for settings, named in cases:
        with pytest.raises(SecuritySettingsError, match=named) as refused:
            kafka_security_options(settings)
        message = str(refused.value)
        assert client.key_password not in message and key_text not in message
        assert refused.value.exit_code == 2


@needs_openssl
def test_switching_host_name_checks_off_warns_once(tls: Any) -> None:
    settings = mtls(tls, ssl_check_hostname=False, kafka_bootstrap="unchecked:9093")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):  # consumer, producer, a replaced producer
            context = kafka_security_options(settings)["ssl_context"]
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED, "the chain is still verified"
    warnings = [e for e in logs if e["event"] == "tls_hostname_verification_disabled"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["setting"] == "MODSTREAM_SSL_CHECK_HOSTNAME"


# -- OAUTHBEARER -----------------------------------------------------------------------


def test_oauth_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    settings = WorkerSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=token_file,
    )
    provider = kafka_security_options(settings)["sasl_oauth_token_provider"]
    assert isinstance(provider, FileTokenProvider)
    assert provider.token() == "first-token"
    # Kubernetes swaps a symlink to a new file: a new inode, whatever the timestamps.
    replacement = tmp_path / "token.new"
    replacement.write_text("second-token")
    os.replace(replacement, token_file)
    assert provider.token() == "second-token"
    token_file.write_text("")
    with pytest.raises(SecuritySettingsError, match=r"MODSTREAM_SASL_OAUTH_TOKEN_FILE.*empty"):
        provider.token()


def test_an_unreadable_token_file_is_refused_at_start(tmp_path: Path) -> None:
    settings = WorkerSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=tmp_path / "absent",
    )
    with pytest.raises(SecuritySettingsError, match="MODSTREAM_SASL_OAUTH_TOKEN_FILE"):
        kafka_security_options(settings)


def test_secret_files_are_bounded_and_must_be_text(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SecuritySettingsError, match="larger than"):
        read_secret_file(huge, "sasl_password_file")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SecuritySettingsError, match="not UTF-8"):
        read_secret_file(binary, "sasl_password_file")
