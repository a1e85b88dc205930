"""External destinations: off by default, shadowed when enabled, ORU with status P when live."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import AckContext, MllpClient, MllpServer, build_ack
from tests.conftest import free_port
from tests.hl7_samples import VITALS_HIGH, oru


class Receiver:
    """A real MLLP listener standing in for the hospital's result interface."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, message: bytes) -> bytes:
        self.received.append(message)
        return build_ack("AA", AckContext(control_id="x"))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.server = MllpServer(self._handle, "127.0.0.1", self.port)
        self._loop.run_until_complete(self.server.start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _send_one(port: int, cid: str) -> None:
    async def main() -> None:
        async with MllpClient("127.0.0.1", port) as client:
            await client.send(oru(cid, "MRN5001", VITALS_HIGH))

    asyncio.run(main())


def _dest(port: int, shadow: bool) -> dict[str, Any]:
    return {
        "writeback": {
            "mllp": [
                {
                    "name": "his",
                    "host": "127.0.0.1",
                    "port": port,
                    "enabled": True,
                    "shadow": shadow,
                }
            ]
        }
    }


def test_an_enabled_destination_defaults_to_shadow_and_receives_nothing(
    gateway_factory: Any, receiver: Receiver
) -> None:
    config = _dest(receiver.port, shadow=True)
    del config["writeback"]["mllp"][0]["shadow"]
    gw = gateway_factory("shadow", config).start()
    _send_one(gw.mllp_port, "WB-S-1")
    disposition = gw.wait_disposed(["WB-S-1"])["WB-S-1"]["disposition"]
    assert disposition["outcome"] == "shadowed" and "his" in disposition["reason"]
    assert receiver.received == []
    gw.stop()


def test_a_live_destination_gets_an_oru_with_preliminary_status_and_the_real_identifier(
    gateway_factory: Any, receiver: Receiver
) -> None:
    gw = gateway_factory("live", _dest(receiver.port, shadow=False)).start()
    _send_one(gw.mllp_port, "WB-L-1")
    disposition = gw.wait_disposed(["WB-L-1"])["WB-L-1"]["disposition"]
    assert disposition["outcome"] == "written_back"
    assert disposition["destinations"] == ["advisory-store", "his"]
    # one ORU per advisory: NEWS2's, and qSOFA's (RR 26, SBP 88, new confusion: 3)
    by_control_id = {m.decode().split("\r")[0].split("|")[9]: m for m in receiver.received}
    assert len(by_control_id) == len(receiver.received) == 2
    [news2] = [cid for cid in by_control_id if cid.endswith("-news2")]
    assert {cid.rsplit("-", 1)[0] for cid in by_control_id} == {news2.rsplit("-", 1)[0]}
    message = by_control_id[news2]
    segments = {s.split("|")[0]: s.split("|") for s in message.decode().split("\r") if s}
    assert segments["MSH"][8].startswith("ORU^R01")
    assert segments["PID"][3].startswith("MRN5001^^^TESTHOSP")
    obx = [s.split("|") for s in message.decode().split("\r") if s.startswith("OBX")]
    assert obx and all(o[11] == "P" for o in obx)
    assert any(o[5] == "19" for o in obx)
    gw.stop()
