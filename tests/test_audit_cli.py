"""`wardgate audit verify` over a real gateway's trail: intact, then edited, deleted, reordered."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import MllpClient
from tests.conftest import REPO
from tests.hl7_samples import VITALS_NORMAL, oru


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import GatewayProcess

    gw = GatewayProcess(tmp_path_factory.mktemp("audit") / "data").start()

    async def send() -> None:
        async with MllpClient("127.0.0.1", gw.mllp_port) as client:
            for i in range(5):
                await client.send(oru(f"AUD-{i}", "MRN77", VITALS_NORMAL))

    asyncio.run(send())
    gw.wait_disposed([f"AUD-{i}" for i in range(5)])
    assert gw.stop() == 0
    return gw.data_dir


def _copy(trail: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    target = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(trail), str(target)], check=True)
    lines = (target / "audit" / "pipeline.infer-writeback.log").read_text().splitlines()
    return target, lines


def test_an_intact_trail_verifies(trail: Path) -> None:
    result = verify(trail)
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout


def test_every_stage_decision_is_in_the_trail(trail: Path) -> None:
    entries = [
        json.loads(line)
        for log in sorted((trail / "audit").glob("*.log"))  # one chain per process
        for line in log.read_text().splitlines()
    ]
    events = {(e["stage"], e["event"]) for e in entries}
    assert {
        ("ingest", "accepted"),
        ("process", "deidentified"),
        ("infer", "advised"),
        ("writeback", "written_back"),
    } <= events


def _bad_entry(stderr: str) -> int:
    return int(stderr.split("entry ")[1].split(":")[0])


def test_an_edited_entry_is_named(trail: Path, tmp_path: Path) -> None:
    data, lines = _copy(trail, tmp_path)
    entry = json.loads(lines[6])
    entry["event"] = "rejected"
    lines[6] = json.dumps(entry, separators=(",", ":"))
    (data / "audit" / "pipeline.infer-writeback.log").write_text("\n".join(lines) + "\n")
    result = verify(data)
    assert result.returncode != 0
    assert _bad_entry(result.stderr) == json.loads(lines[6])["seq"]


def test_a_deleted_entry_is_detected(trail: Path, tmp_path: Path) -> None:
    data, lines = _copy(trail, tmp_path)
    seq = json.loads(lines[6])["seq"]
    del lines[6]
    (data / "audit" / "pipeline.infer-writeback.log").write_text("\n".join(lines) + "\n")
    result = verify(data)
    assert result.returncode != 0 and _bad_entry(result.stderr) == seq


def test_reordered_entries_are_detected(trail: Path, tmp_path: Path) -> None:
    data, lines = _copy(trail, tmp_path)
    seq = json.loads(lines[5])["seq"]
    lines[5], lines[6] = lines[6], lines[5]
    (data / "audit" / "pipeline.infer-writeback.log").write_text("\n".join(lines) + "\n")
    result = verify(data)
    assert result.returncode != 0 and _bad_entry(result.stderr) == seq
