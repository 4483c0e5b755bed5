"""The Kafka security settings (TLS, SASL, secrets and their files) and the rules
across them, one group of `WorkerSettings` (worker/settings.py).

Apart from the other groups (worker/setting_groups.py) because these settings only
mean something together: a TLS file without a TLS protocol, a certificate without its
key, a secret set twice are refused here at start, naming the setting, rather than
failing on the first connection. Turning them into client options is
worker/security.py's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator

from worker.setting_names import setting_names

# Settings that only mean something on a TLS connection.
TLS_SETTINGS = (
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "ssl_key_password_file",
)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class SecuritySettings(BaseModel):
    """How the worker authenticates to the brokers and verifies them."""

    security_protocol: Annotated[
        SecurityProtocol, Field(description="Kafka security protocol.")
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        SaslMechanism | None,
        Field(
            description="SASL mechanism when the protocol uses SASL: PLAIN, SCRAM-SHA-256, "
            "SCRAM-SHA-512 or OAUTHBEARER."
        ),
    ] = None
    sasl_username: Annotated[str | None, Field(description="SASL user name (PLAIN and SCRAM).")] = (
        None
    )
    sasl_password: Annotated[
        SecretStr | None,
        Field(description="SASL password (env only; or sasl_password_file)."),
    ] = None
    sasl_password_file: Annotated[
        Path | None,
        Field(description="File holding the SASL password (e.g. a mounted Secret)."),
    ] = None
    sasl_oauth_token_file: Annotated[
        Path | None,
        Field(
            description="OAUTHBEARER: file holding the access token, re-read whenever "
            "it changes (e.g. a projected service-account token)."
        ),
    ] = None
    ssl_cafile: Annotated[
        Path | None,
        Field(
            description="CA bundle (PEM) the broker certificate must chain to; "
            "default: the system's."
        ),
    ] = None
    ssl_certfile: Annotated[
        Path | None,
        Field(description="Client certificate chain (PEM) for mutual TLS."),
    ] = None
    ssl_keyfile: Annotated[
        Path | None,
        Field(description="Private key (PEM) of the client certificate."),
    ] = None
    ssl_key_password: Annotated[
        SecretStr | None,
        Field(
            description="Password of an encrypted ssl_keyfile (env only; or ssl_key_password_file)."
        ),
    ] = None
    ssl_key_password_file: Annotated[
        Path | None,
        Field(description="File holding the password of an encrypted ssl_keyfile."),
    ] = None
    ssl_check_hostname: Annotated[
        bool,
        Field(
            description="Check that the broker certificate names the host connected to; "
            "false (logged as a warning) only for brokers whose certificates cannot."
        ),
    ] = True

    @field_validator("sasl_mechanism")
    @classmethod
    def _sasl_needs_a_mechanism(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol", "PLAINTEXT")
        if value is None and str(protocol).startswith("SASL_"):
            raise ValueError(f"required when security_protocol is {protocol}")
        return value

    @model_validator(mode="after")
    def _security_settings_fit_together(self) -> Self:
        """Refuse combinations that could only fail later, or silently not apply."""
        uses_tls = self.security_protocol.endswith("SSL")
        if not uses_tls:
            for name in TLS_SETTINGS:
                if getattr(self, name) is not None:
                    raise _invalid(
                        name,
                        f"set, but security_protocol {self.security_protocol} "
                        "does not use TLS (SSL or SASL_SSL)",
                    )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            missing = "ssl_keyfile" if self.ssl_keyfile is None else "ssl_certfile"
            raise _invalid(missing, "mutual TLS needs both ssl_certfile and ssl_keyfile")
        _at_most_one(self, "ssl_key_password")
        if self.ssl_keyfile is None and (
            self.ssl_key_password is not None or self.ssl_key_password_file is not None
        ):
            raise _invalid("ssl_key_password", "set without ssl_keyfile")
        mechanism = self.sasl_mechanism
        if mechanism is None:  # a SASL protocol without one is refused field by field
            return self
        if not self.security_protocol.startswith("SASL_"):
            raise _invalid(
                "sasl_mechanism",
                f"set, but security_protocol {self.security_protocol} does not use SASL",
            )
        if mechanism == "OAUTHBEARER":
            if self.sasl_oauth_token_file is None:
                raise _invalid("sasl_oauth_token_file", "required with sasl_mechanism OAUTHBEARER")
            return self
        if self.sasl_username is None:
            raise _invalid("sasl_username", f"required with sasl_mechanism {mechanism}")
        _at_most_one(self, "sasl_password")
        if self.sasl_password is None and self.sasl_password_file is None:
            raise _invalid(
                "sasl_password",
                f"required with sasl_mechanism {mechanism}: set "
                "MODSTREAM_SASL_PASSWORD or MODSTREAM_SASL_PASSWORD_FILE",
            )
        return self


def _invalid(field: str, why: str) -> ValueError:
    return ValueError(f"{setting_names(field)}: {why}")


def _at_most_one(settings: SecuritySettings, secret: str) -> None:
    """A secret comes from the environment or from its file, never both."""
    if getattr(settings, secret) is not None and getattr(settings, f"{secret}_file") is not None:
        raise _invalid(f"{secret}_file", f"set together with MODSTREAM_{secret.upper()}; use one")
