"""`wardgate keys rotate`: versioned keys, crash-safe vault re-keying, pseudonym links (ADR 5)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adapters import MllpClient, ack_code
from gateway._cli import app
from gateway._config import Settings, load_settings
from gateway._keys_cli import RotationRefused, rotate_pseudonym, rotate_vault
from security import Vault, VaultBusy, VaultError, VaultRekeyer, key_id, load_keyring
from security.audit import read_entries, verify_log
from security.deid import Deidentifier, pseudonym
from tests.conftest import REPO, GatewayProcess, http_json
from tests.hl7_samples import VITALS_HIGH, adt, oru

runner = CliRunner()
SYSTEM = "urn:oid:1.2.3.4.mrn"


def _settings(data: Path) -> Settings:
    return load_settings(None, data_dir=data)


def _fill(data: Path, n: int) -> dict[str, list[dict[str, str]]]:
    """``n`` identities in the vault under the current keys, as the pipeline stores them."""
    keys = load_keyring(data)
    stored = {}
    with Vault(data / "vault.db", keys.vault) as vault:
        for i in range(n):
            mrn = f"MRN-{i:03}"
            ids = [{"system": SYSTEM, "value": mrn}, {"system": "urn:ssn", "value": f"S{i}"}]
            subject = pseudonym(keys.pseudonym, keys.pseudonym_version, SYSTEM, mrn)
            vault.put(subject, ids)
            stored[subject] = ids
    return stored


def _key_ids(data: Path) -> Counter[str | None]:
    db = sqlite3.connect(data / "vault.db")
    try:
        return Counter(r[0] for r in db.execute("SELECT key_id FROM identities"))
    finally:
        db.close()


def _secret(data: Path, name: str) -> bytes:
    return base64.b64decode((data / "keys" / name).read_bytes())


def _all_open(vault: Vault, stored: dict[str, list[dict[str, str]]]) -> None:
    for subject, ids in stored.items():
        assert vault.get(subject) == ids


def _events(data: Path) -> list[str]:
    return [e.event for e in read_entries(data / "audit" / "keys.log")]


def test_rotating_the_vault_key_reseals_every_row_under_a_new_version(tmp_path: Path) -> None:
    stored = _fill(tmp_path, 25)
    done = rotate_vault(_settings(tmp_path), batch=10)
    assert (done.version, done.rows, done.generated) == ("v2", 25, True)
    new_key = tmp_path / "keys" / "vault.v2.key"
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    v2 = _secret(tmp_path, "vault.v2.key")
    assert _key_ids(tmp_path) == {key_id(v2): 25}
    with Vault(tmp_path / "vault.db", v2) as only_the_new_key:  # v1 is not needed any more
        _all_open(only_the_new_key, stored)
    assert _events(tmp_path) == ["rotation_started", "rotated"]


def test_a_crash_between_batches_leaves_every_row_openable_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    stored = _fill(tmp_path, 25)
    crash = (
        "import os, signal\n"
        "from gateway._config import load_settings\n"
        "from gateway._keys_cli import rotate_vault\n"
        f"settings = load_settings(None, data_dir={str(tmp_path)!r})\n"
        "rotate_vault(settings, batch=10,"
        " after_batch=lambda done: os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    proc = subprocess.run([sys.executable, "-c", crash], cwd=REPO, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL

    v1, v2 = _secret(tmp_path, "vault.key"), _secret(tmp_path, "vault.v2.key")
    assert _key_ids(tmp_path) == {key_id(v2): 10, key_id(v1): 15}  # one batch committed
    keys = load_keyring(tmp_path)
    with Vault(tmp_path / "vault.db", keys.vault) as vault:  # what a gateway would open
        _all_open(vault, stored)
    status = runner.invoke(app, ["keys", "status", "--data-dir", str(tmp_path)])
    assert "15 rows still under v1" in status.output

    done = rotate_vault(_settings(tmp_path), batch=10)
    assert (done.version, done.rows, done.generated) == ("v2", 15, False)
    assert not (tmp_path / "keys" / "vault.v3.key").exists()
    assert _key_ids(tmp_path) == {key_id(v2): 25}
    with Vault(tmp_path / "vault.db", v2) as vault:
        _all_open(vault, stored)
    assert verify_log(tmp_path / "audit" / "keys.log", keys.audit_public).ok


def test_an_interrupted_pseudonym_rotation_is_audited_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    stored = _fill(tmp_path, 12)

    def fail(done: int) -> None:
        raise RuntimeError("injected failure between batches")

    with pytest.raises(RuntimeError, match="injected"):
        rotate_pseudonym(_settings(tmp_path), batch=5, after_batch=fail)
    assert _events(tmp_path) == ["rotation_started", "rotation_failed"]
    done = rotate_pseudonym(_settings(tmp_path), batch=5)
    assert (done.version, done.generated) == ("v2", False)
    keys = load_keyring(tmp_path)
    with Vault(tmp_path / "vault.db", keys.vault) as vault:
        _all_open(vault, stored)
        for subject, ids in stored.items():
            new = keys.subject_pseudonyms(SYSTEM, ids[0]["value"])[0]
            assert new.startswith("v2-") and vault.get(new) == ids
            assert vault.linked([new]) == [new, subject]


def test_after_a_pseudonym_rotation_old_pseudonyms_reidentify_and_new_subjects_get_v2(
    tmp_path: Path,
) -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": "MRN-7"}]}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    keys = load_keyring(tmp_path)
    before = Deidentifier(keys.pseudonym, keys.dateshift, keys.pseudonym_version).deidentify(bundle)
    with Vault(tmp_path / "vault.db", keys.vault) as vault:
        vault.put(before.subject, before.identifiers)

    assert rotate_pseudonym(_settings(tmp_path)).version == "v2"

    keys = load_keyring(tmp_path)
    after = Deidentifier(keys.pseudonym, keys.dateshift, keys.pseudonym_version).deidentify(bundle)
    assert before.subject.startswith("v1-") and after.subject.startswith("v2-")
    assert keys.dateshift == _secret(tmp_path, "dateshift.v2.key")  # a new offset per version
    assert keys.subject_pseudonyms(SYSTEM, "MRN-7") == [after.subject, before.subject]
    with Vault(tmp_path / "vault.db", keys.vault) as vault:
        assert vault.get(before.subject) == before.identifiers  # stored data re-identifies
        assert vault.get(after.subject) == before.identifiers  # the rotation linked it
        assert vault.linked([after.subject]) == [after.subject, before.subject]


def test_rotation_is_refused_while_a_gateway_has_the_vault_open(tmp_path: Path) -> None:
    _fill(tmp_path, 3)
    keys = load_keyring(tmp_path)
    with Vault(tmp_path / "vault.db", keys.vault):  # as the gateway and its pipeline hold it
        result = runner.invoke(
            app, ["keys", "rotate", "--key", "vault", "--data-dir", str(tmp_path)]
        )
    assert result.exit_code == 1
    assert "stop the gateway" in result.output
    assert not (tmp_path / "keys" / "vault.v2.key").exists()
    assert not (tmp_path / "audit" / "keys.log").exists()


def test_a_gateway_cannot_open_the_vault_while_a_rotation_runs(tmp_path: Path) -> None:
    _fill(tmp_path, 3)
    keys = load_keyring(tmp_path)
    with (
        VaultRekeyer(tmp_path / "vault.db", keys.vault),
        pytest.raises(VaultBusy, match="being re-keyed"),
    ):
        Vault(tmp_path / "vault.db", keys.vault)


def test_a_process_holding_keys_from_before_a_rotation_refuses_the_vault(tmp_path: Path) -> None:
    _fill(tmp_path, 3)
    stale = load_keyring(tmp_path)
    rotate_vault(_settings(tmp_path))
    with pytest.raises(VaultError, match="has not loaded"):
        Vault(tmp_path / "vault.db", stale.vault)


def test_environment_keys_carry_versions_and_rotation_asks_for_the_next_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("WARDGATE_KEY_VAULT", base64.b64encode(v1).decode())
    stored = _fill(tmp_path, 7)
    monkeypatch.setenv("WARDGATE_KEY_VAULT_V2", base64.b64encode(v2).decode())
    keys = load_keyring(tmp_path)
    assert keys.vault.current == "v2" and str(keys.vault.sources["v2"]) == (
        "env WARDGATE_KEY_VAULT_V2"
    )

    done = rotate_vault(_settings(tmp_path))  # the provisioned v2 finishes the rotation
    assert (done.version, done.rows, done.generated) == ("v2", 7, False)
    assert not list((tmp_path / "keys").glob("vault*"))  # no secret written for env keys
    with Vault(tmp_path / "vault.db", v2) as vault:
        _all_open(vault, stored)

    with pytest.raises(RotationRefused, match="WARDGATE_KEY_VAULT_V3"):
        rotate_vault(_settings(tmp_path))
    assert not list((tmp_path / "keys").glob("vault*"))


def test_a_pseudonym_version_without_its_dateshift_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARDGATE_KEY_PSEUDONYM_V2", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(ValueError, match="WARDGATE_KEY_DATESHIFT_V2"):
        load_keyring(tmp_path)
    monkeypatch.setenv("WARDGATE_KEY_DATESHIFT_V2", base64.b64encode(os.urandom(32)).decode())
    assert load_keyring(tmp_path).pseudonym_version == "v2"


def test_a_retired_key_version_is_not_generated_again(tmp_path: Path) -> None:
    stored = _fill(tmp_path, 4)
    rotate_vault(_settings(tmp_path))
    (tmp_path / "keys" / "vault.key").unlink()  # what the operator does once backups expire
    keys = load_keyring(tmp_path)
    assert list(keys.vault.secrets) == ["v2"]
    assert not (tmp_path / "keys" / "vault.key").exists()
    with Vault(tmp_path / "vault.db", keys.vault) as vault:
        _all_open(vault, stored)


def test_status_names_versions_sources_and_rows_but_never_a_key(tmp_path: Path) -> None:
    _fill(tmp_path, 5)
    rotate_vault(_settings(tmp_path))
    result = runner.invoke(app, ["keys", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    v1 = next(line for line in lines if line.startswith("vault") and "v1" in line)
    v2 = next(line for line in lines if line.startswith("vault") and "v2" in line)
    assert "0 rows" in v1 and "no row uses it" in v1
    assert "5 rows" in v2 and "*" in v2 and "keys/vault.v2.key" in v2
    for path in (tmp_path / "keys").iterdir():
        text = path.read_text().strip()
        assert text not in result.output and text[:12] not in result.output


@pytest.mark.parametrize("key", ["dateshift", "journal", "audit"])
def test_keys_that_do_not_rotate_are_refused_with_the_reason(tmp_path: Path, key: str) -> None:
    result = runner.invoke(app, ["keys", "rotate", "--key", key, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not rotated:" in result.output and "rotatable: vault, pseudonym" in result.output
    assert not (tmp_path / "keys").exists()


# -- end to end: a real gateway, stopped, rotated, started again ------------------------

NEWS2 = "http://snomed.info/sct|1104051000000101"
MRN = "MRN-ROTATE-1"


def send(port: int, messages: list[bytes]) -> list[bytes]:
    async def main() -> list[bytes]:
        async with MllpClient("127.0.0.1", port) as client:
            return [await client.send(m) for m in messages]

    return asyncio.run(main())


def _subjects(record: dict[str, Any]) -> set[str]:
    return {
        r["subject"]["identifier"]["value"]
        for r in record["advisories"]
        if "subject" in r and "identifier" in r["subject"]
    }


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    """A gateway that scored one message, refused a rotation while running, was stopped,
    had both keys rotated, was started again and scored a second message."""
    gw = GatewayProcess(tmp_path_factory.mktemp("rotate") / "data").start()
    try:
        acks = send(gw.mllp_port, [adt("ROT-ADT-1", MRN), oru("ROT-ORU-1", MRN, VITALS_HIGH)])
        assert [ack_code(a) for a in acks] == ["AA", "AA"]
        gw.wait_disposed(["ROT-ADT-1", "ROT-ORU-1"])
        args = ["keys", "rotate", "--data-dir", str(gw.data_dir), "--key"]
        refused = runner.invoke(app, [*args, "vault"])
        assert gw.stop() == 0
        for key in ("vault", "pseudonym"):
            result = runner.invoke(app, [*args, key])
            assert result.exit_code == 0, result.output
        gw.start()
        assert ack_code(send(gw.mllp_port, [oru("ROT-ORU-2", MRN, VITALS_HIGH)])[0]) == "AA"
        gw.wait_disposed(["ROT-ORU-2"])
        yield gw, refused.output
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop(signal.SIGKILL)


def test_rotation_is_refused_while_the_gateway_runs(rotated: tuple[GatewayProcess, str]) -> None:
    assert "not rotated" in rotated[1] and "stop the gateway" in rotated[1]


def test_data_stored_before_both_rotations_still_reidentifies_at_egress(
    rotated: tuple[GatewayProcess, str],
) -> None:
    gw = rotated[0]
    _, old = http_json(f"{gw.url}/records/ROT-ORU-1")
    _, new = http_json(f"{gw.url}/records/ROT-ORU-2")
    (old_subject,) = _subjects(old)
    (new_subject,) = _subjects(new)
    assert old_subject.startswith("v1-") and new_subject.startswith("v2-")
    status, bundle = http_json(f"{gw.url}/fhir/RiskAssessment?code={NEWS2}")
    assert status == 200 and bundle["total"] == 2
    for entry in bundle["entry"]:  # v1 and v2 subjects, both via the re-keyed vault
        assert entry["resource"]["subject"]["identifier"] == {
            "system": "urn:id:TESTHOSP",
            "value": MRN,
        }


def test_a_search_by_the_real_identifier_finds_advisories_from_before_the_rotation(
    rotated: tuple[GatewayProcess, str],
) -> None:
    gw = rotated[0]
    status, bundle = http_json(
        f"{gw.url}/fhir/RiskAssessment?code={NEWS2}&subject=urn:id:TESTHOSP|{MRN}"
    )
    assert status == 200 and bundle["total"] == 2
