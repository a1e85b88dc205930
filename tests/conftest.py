"""Fixtures that run real gateways: subprocesses on free loopback ports, stopped after."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class GatewayProcess:
    """``wardgate run`` as a child process over a data dir, with its stderr captured."""

    def __init__(self, data_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.config = config or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-stderr.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0, ready: bool = True) -> GatewayProcess:
        """Start and wait for /readyz 200 (or, with ``ready=False``, for any answer)."""
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--data-dir",
            str(self.data_dir),
            "--mllp-port",
            str(self.mllp_port),
            "--http-port",
            str(self.http_port),
        ]
        if self.config:
            cfg = self.data_dir.parent / f"{self.data_dir.name}-config.yaml"
            cfg.write_text(yaml.safe_dump(self.config))
            cmd += ["--config", str(cfg)]
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                status, body = http_json(self.url + "/readyz", timeout=1)
                if status == 200 or (not ready and body.get("pipeline") == "running"):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready: " + self.logs()[-2000:])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def wait_disposed(self, control_ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
        """Poll /records until every control id has a disposition; return them by id."""
        done: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for cid in control_ids:
                if cid not in done:
                    status, body = http_json(f"{self.url}/records/{cid}")
                    if status == 200 and body["disposition"] is not None:
                        done[cid] = body
            if len(done) == len(control_ids):
                return done
            time.sleep(0.1)
        missing = sorted(set(control_ids) - set(done))
        raise AssertionError(f"no disposition for {missing[:5]} ({len(missing)} missing)")


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def make(name: str = "data", config: dict[str, Any] | None = None) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / name, config)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop(signal.SIGKILL)


def _peer_corpus() -> Path:
    """The peers' HL7 samples, read in place from ../shared (never copied into the repo)."""
    for candidate in (REPO.parent / "shared" / "peer-hl7", Path("/work/shared/peer-hl7")):
        if (candidate / "manifest.json").exists():
            return candidate
    raise RuntimeError("peer HL7 corpus not found: expected ../shared/peer-hl7 beside the repo")


PEER_HL7 = _peer_corpus()
