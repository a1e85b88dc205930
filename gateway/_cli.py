"""The ``wardgate`` command line: run the gateway, send the demo feed, verify the audit trail."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from gateway._config import Settings, load_settings
from gateway._deid_cli import deid
from gateway._keys_cli import app as keys_app
from gateway._log import configure
from gateway._model_cli import app as model_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="wardgate: the airlock between hospital systems and AI advisories.",
)
audit_app = typer.Typer(
    no_args_is_help=True, help="Verify and read the tamper-evident audit trail."
)
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
app.command("deid")(deid)
stage_app = typer.Typer(no_args_is_help=True, help="Run one part of the pipeline on its own.")
app.add_typer(stage_app, name="stage")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML configuration file")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="where state and keys live")]


def _settings(config: Path | None, data_dir: Path | None, **more: object) -> Settings:
    return load_settings(config, data_dir=data_dir, **more)


@app.command()
def run(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    mllp_port: Annotated[int | None, typer.Option(help="MLLP listener port")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP (FHIR, health) port")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="send a synthetic feed once up")] = False,
) -> None:
    """Run the gateway on embedded defaults (SQLite, in-process bus, CPU inference)."""
    settings = _settings(config, data_dir, **{"mllp.port": mllp_port, "http.port": http_port})
    configure(settings.log_level)
    asyncio.run(_run(settings, config, demo))


async def _run(settings: Settings, config: Path | None, demo: bool) -> None:
    from gateway._runtime import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings, config)
    async with asyncio.TaskGroup() as group:
        group.create_task(gateway.run(stop))
        await gateway.ready.wait()
        url = f"http://{settings.http.host}:{gateway.http_port}"
        typer.echo(
            f"wardgate listening: MLLP {settings.mllp.host}:{gateway.mllp_port}, HTTP {url}",
            err=True,
        )
        if demo:
            await _demo(settings.mllp.host, gateway.mllp_port, url, patients=12, rounds=4)


async def _demo(host: str, port: int, base_url: str, patients: int, rounds: int) -> None:
    from gateway._demo import send_feed

    total = patients * (rounds + 1)
    with typer.progressbar(
        length=total, label="sending synthetic HL7 over MLLP", file=sys.stderr
    ) as bar:
        seed = int(time.time())  # new MSH-10s each run, so a second demo is not all duplicates
        codes = await send_feed(host, port, patients, rounds, seed=seed, on_sent=bar.update)
    typer.echo(f"sent {total} messages; ACKs: {dict(codes)}", err=True)
    typer.echo(
        "advisories appear as they are scored:\n"
        f"  curl '{base_url}/fhir/RiskAssessment?subject=urn:id:WARDGATE-DEMO|DEMO0001'\n"
        f"  curl '{base_url}/fhir/Observation?code=http://snomed.info/sct|1104051000000101'\n"
        f"  curl '{base_url}/records/<MSH-10>'    (disposition and what the model saw)\n"
        f"  curl '{base_url}/metrics'",
        err=True,
    )


@app.command("demo")
def demo_cmd(
    host: Annotated[str, typer.Option(help="gateway MLLP host")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gateway MLLP port")] = 2575,
    http_url: Annotated[str, typer.Option(help="gateway HTTP base URL")] = "http://127.0.0.1:8080",
    patients: Annotated[int, typer.Option(help="synthetic patients")] = 12,
    rounds: Annotated[int, typer.Option(help="vital-sign rounds per patient")] = 4,
) -> None:
    """Send a synthetic ADT + vital-signs feed to a running gateway over MLLP."""
    asyncio.run(_demo(host, port, http_url, patients, rounds))


@stage_app.command("pipeline")
def stage_pipeline(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    stages: Annotated[
        str,
        typer.Option(
            help="the stages this process runs, upstream first (a group of pipeline.processes)"
        ),
    ] = "process,infer,writeback",
) -> None:
    """Run pipeline stages: normalize, infer, writeback (``run`` starts these for you)."""
    from gateway._groups import exit_with_parent, parse_stages
    from gateway._pipeline import Pipeline

    exit_with_parent()
    try:
        chosen = parse_stages(stages)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--stages") from None
    settings = _settings(config, data_dir)
    configure(settings.log_level)
    os.nice(settings.pipeline.nice)  # ingest first (ADR 7); the sandbox workers inherit it
    Pipeline(settings, chosen).run()


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Exit 0 if every audit chain is intact; otherwise name the first bad entry, exit 1.

    Each writing process keeps its own chain under ``<data-dir>/audit/`` (the gateway's
    ingest decisions, the pipeline's stage decisions).
    """
    from security import load_keyring
    from security.audit import verify_log

    settings = _settings(config, data_dir)
    logs = sorted((settings.data_dir / "audit").glob("*.log"))
    if not logs:
        typer.echo(f"no audit trail under {settings.data_dir}", err=True)
        raise typer.Exit(2)
    keys = load_keyring(settings.data_dir, settings.key_files)
    broken = False
    for path in logs:
        report = verify_log(path, keys.audit_public)
        if report.ok:
            typer.echo(f"{path.name}: intact, {report.entries} entries")
        else:
            typer.echo(
                f"{path.name}: BROKEN at entry {report.first_bad}: {report.reason}", err=True
            )
            broken = True
    if broken:
        raise typer.Exit(1)


def main() -> None:
    app()
