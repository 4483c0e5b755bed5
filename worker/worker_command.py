"""`modstream worker`: its flags (one per `WorkerSettings` field) and its start-up.

Why apart from worker/cli.py: one module per command, as worker/score_command.py,
worker/retrain_command.py and worker/checkpoint_commands.py are; cli.py keeps `main`, the
parser and the exit-code mapping. `check_security_files` serves `retrain` too. Start-up,
in order: settings, logging, the settings in effect, TLS and secret files, the model (in
this process or in a scoring process: `MODSTREAM_SCORING`), the threshold policy, the
/metrics server, the reloader, Kafka; then the `Worker` runs until SIGTERM.

Importing it is as light as worker/cli.py: everything heavy (torch, the Kafka clients)
is imported inside the functions, once the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from model.errors import ExitCode, ModstreamError
from worker.command_errors import CheckpointUnusableError, UsageError, describe_validation_error

__all__ = ["add_parser", "check_security_files", "load_settings"]

WORKER_DESCRIPTION = """\
Consume moderation requests from Kafka, score them in batches, publish one result (or
dead letter) per request, and commit offsets only after the outputs are acknowledged.
Every setting is a flag and a MODSTREAM_* environment variable (flags win); the values
in effect are logged once at start. Serves /metrics, /livez and /readyz on
--metrics-port. SIGTERM/SIGINT: finish the batch in hand, commit, exit 0. SIGHUP:
check the checkpoint for a new version now.

The passwords have no flag (a command line shows in `ps` and shell history): set
MODSTREAM_SASL_PASSWORD and MODSTREAM_SSL_KEY_PASSWORD in the environment only, or
name a file holding them with --sasl-password-file / --ssl-key-password-file."""

WORKER_EPILOG = """\
example:
  MODSTREAM_KAFKA_BOOTSTRAP=broker:9092 modstream worker --checkpoint-dir checkpoints

exit codes: 0 stopped by SIGTERM/SIGINT after committing; 1 failure (e.g. outputs not
acknowledged at shutdown, another worker with the same identity); 2 a bad setting, or
the metrics port is in use; 3 the checkpoint is missing or does not load; 4 no Kafka
broker answered within --startup-timeout-s."""


def add_parser(sub: Any) -> None:
    """`modstream worker` and its flags, one per setting."""
    worker = sub.add_parser(
        "worker",
        help="consume requests, publish results (long-running)",
        description=WORKER_DESCRIPTION,
        epilog=WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # No abbreviations: `--sasl-password x` must fail, not become `--sasl-password-file x`.
        allow_abbrev=False,
    )
    _add_settings_flags(worker)
    worker.set_defaults(handler=_run_worker)


# -- flags -------------------------------------------------------------------------


def _settings_fields() -> dict[str, Any]:
    from worker.settings import WorkerSettings

    return dict(WorkerSettings.model_fields)


def _flag_shape(name: str, annotation: Any) -> dict[str, Any]:
    """choices for a Literal setting, else a metavar from its type or unit suffix."""
    options = [a for a in get_args(annotation) if a is not type(None)]
    inner = options[0] if get_origin(annotation) in (Union, UnionType) else annotation
    if get_origin(inner) is Literal:
        return {"choices": list(get_args(inner))}
    if inner is Path:
        return {"metavar": "PATH"}
    for suffix, metavar in (("_ms", "MS"), ("_us", "MICROSECONDS"), ("_s", "SECONDS")):
        if name.endswith(suffix):
            return {"metavar": metavar}
    return {"metavar": {int: "N", float: "X"}.get(inner, "TEXT")}


def _shown_default(field: Any) -> str:
    if field.default_factory is not None:
        return "checkpoints/current under the repo root"
    if field.default is None:
        return "none"
    return str(field.default)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    from worker.setting_names import ENV_ONLY_SETTINGS

    for name, field in _settings_fields().items():
        if name in ENV_ONLY_SETTINGS:
            continue
        flag = "--" + name.replace("_", "-")
        env = "MODSTREAM_" + name.upper()
        description = (field.description or "").rstrip(".")
        parser.add_argument(
            flag,
            dest=f"setting_{name}",
            default=None,
            help=f"{description} (default: {_shown_default(field)}) [env {env}]",
            **_flag_shape(name, field.annotation),
        )


def load_settings(args: argparse.Namespace) -> Any:
    from worker.settings import WorkerSettings

    overrides = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from exc


# -- start-up ----------------------------------------------------------------------


def _metrics_server(settings: Any, worker: Any) -> Any:
    """The /metrics and health server, bound now; a port already taken is a usage error
    naming the setting, not a traceback."""
    import errno

    from worker.health import HealthServer

    try:
        return HealthServer(
            settings.metrics_host, settings.metrics_port, worker.metrics.registry, worker.health
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"metrics port {settings.metrics_port} on {settings.metrics_host} is already in "
                "use (--metrics-port / MODSTREAM_METRICS_PORT; 0 picks a free port)"
            ) from exc
        raise UsageError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
            f"(--metrics-host / MODSTREAM_METRICS_HOST, --metrics-port / "
            f"MODSTREAM_METRICS_PORT): {exc.strerror or exc}"
        ) from exc


def _announce_settings(settings: Any, log: Any) -> None:
    """One line with the settings in effect (secrets masked), and a warning per
    `MODSTREAM_*` variable nothing reads, naming the closest known one."""
    from worker.startup import effective_settings, unknown_variables

    for variable, closest in unknown_variables(os.environ):
        log.warning(
            "unknown_variable",
            variable=variable,
            did_you_mean=closest,
            note="no setting reads it; it is ignored",
        )
    log.info("settings", **effective_settings(settings))


def check_security_files(settings: Any) -> None:
    """TLS and secret files are usable, before anything slow starts (exit 2 if not)."""
    from worker.security import SecuritySettingsError

    try:
        settings.kafka_common()
    except SecuritySettingsError as exc:
        raise UsageError(str(exc)) from exc


def _run_worker(args: argparse.Namespace) -> int:
    from worker.signals import SignalRelay

    # Installed by `main` before parsing; start-up checks it between its steps.
    signals: SignalRelay = args.signals
    settings = load_settings(args)
    from worker.logs import configure_logging

    configure_logging(settings.log_level)
    import structlog

    log = structlog.get_logger("modstream.cli")
    log.info("worker_starting", checkpoint_dir=str(settings.checkpoint_dir))
    _announce_settings(settings, log)
    check_security_files(settings)
    from worker.app import Worker
    from worker.clients import BrokerUnavailableError
    from worker.collector import freeze_long_lived
    from worker.health import HealthState
    from worker.metrics import WorkerMetrics
    from worker.reload import Reloader
    from worker.scoring_choice import choose_scoring
    from worker.startup import startup_policy

    def stopped_during(step: str) -> bool:
        if signals.requested:
            log.info("stopped_during_startup", step=step)
        return signals.requested

    if stopped_during("starting"):
        return ExitCode.OK
    if settings.gil_switch_interval_us:
        # The scoring thread releases the GIL inside every torch call and must win it
        # back from the processing thread; at Python's 5 ms default each handover can
        # stall it that long (measured: +15 % throughput at 100 µs, bench/README).
        sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
    metrics = WorkerMetrics()
    health = HealthState(liveness_deadline_s=settings.liveness_deadline_s)
    scoring = choose_scoring(settings.scoring)
    log.info("scoring_mode", mode=scoring, setting=settings.scoring)
    if scoring == "process":
        engine, scorer = _start_scoring_process(settings, log, metrics, health)
    else:
        engine, scorer = _load_engine(settings, log), None
    try:
        if stopped_during("loading the model"):
            return ExitCode.OK
        overrides = settings.threshold_overrides()
        try:
            policy = startup_policy(settings.checkpoint_dir, engine.labels, overrides)
        except ModstreamError as exc:
            log.error("thresholds_unusable", version=engine.version, error=str(exc))
            raise
        worker = Worker(settings, engine, metrics, health, policy=policy)
        signals.on_stop(worker.request_stop)  # at once if the signal came meanwhile
        server = _metrics_server(settings, worker)
        server.start()
        log.info("metrics_listening", port=server.port, host=settings.metrics_host)

        reloader = Reloader(
            settings.checkpoint_dir,
            worker.engines,
            worker.metrics,
            settings.reload_interval_s,
            device=settings.device,
            engine_options=settings.engine_options(),
            overrides=overrides,
            loader=scorer,
        )
        signals.on_reload(reloader.request_check)
        try:
            worker.connect()
        except BrokerUnavailableError as exc:
            server.stop()
            if stopped_during("connecting"):
                return ExitCode.OK
            log.error("broker_unreachable", error=str(exc))
            raise
        # Start-up and warm-up are done: the collector leaves what they built alone from
        # now on (worker/collector.py).
        log.info("collector_frozen", objects=freeze_long_lived())
        reloader.start()
        try:
            return worker.run()  # a stop that came while connecting ends it at once, cleanly
        finally:
            reloader.stop()
            server.stop()
    finally:
        if scorer is not None:
            scorer.close()  # after the drain: every batch in hand was scored


def _load_engine(settings: Any, log: Any) -> Any:
    """The serving Engine in this process (`MODSTREAM_SCORING=in_process`), warmed up."""
    from model.checkpoint import CheckpointError
    from model.engine import Engine, EngineError

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        engine = Engine.load(
            settings.checkpoint_dir, device=settings.device, **settings.engine_options()
        )
    except (CheckpointError, EngineError) as exc:
        log.error(
            "checkpoint_unusable", checkpoint_dir=str(settings.checkpoint_dir), error=str(exc)
        )
        raise CheckpointUnusableError(f"checkpoint {settings.checkpoint_dir}: {exc}") from exc
    log.info("engine_warmed_up", seconds=round(engine.warm_up(), 3), version=engine.version)
    return engine


def _start_scoring_process(settings: Any, log: Any, metrics: Any, health: Any) -> tuple[Any, Any]:
    """The scoring process, started with the serving model loaded and warmed up in it
    (`MODSTREAM_SCORING=process`), and that model as the worker serves it."""
    from model.paths import resolve_checkpoint_dir
    from worker.scoring_choice import ScoringOptions
    from worker.scoring_errors import ScoringStartError
    from worker.scoring_process import ScoringProcess

    scorer = ScoringProcess(ScoringOptions.from_settings(settings), metrics, health)
    # The version directory, not the store's pointer: after a restart the process must
    # load this very version again, whatever is current by then.
    resolved = resolve_checkpoint_dir(settings.checkpoint_dir)
    try:
        model = scorer.start(resolved)
    except ScoringStartError as exc:
        scorer.close()
        log.error(
            "checkpoint_unusable", checkpoint_dir=str(settings.checkpoint_dir), error=str(exc)
        )
        if exc.checkpoint:
            raise CheckpointUnusableError(f"checkpoint {settings.checkpoint_dir}: {exc}") from exc
        raise
    except BaseException:
        scorer.close()
        raise
    log.info("engine_warmed_up", version=model.version, process=scorer.pid)
    return model, scorer
