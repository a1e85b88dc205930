"""The demo: send clearly synthetic ADT and vital-sign ORU messages to a gateway over MLLP."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from adapters import MllpClient, ack_code
from gateway._demo_feed import synthetic_messages
from gateway.normalize import parse_message


async def send_feed(
    host: str,
    port: int,
    patients: int,
    rounds: int,
    seed: int = 0,
    on_sent: Callable[[int], None] = lambda n: None,
    connections: int = 4,
) -> Counter[str]:
    """Send the feed over ``connections`` MLLP connections; count the ACK codes.

    A new ``seed`` gives new MSH-10s: the same seed again is acknowledged as duplicates.
    """
    # One patient's messages go over one connection, so they arrive in order.
    by_conn: list[list[bytes]] = [[] for _ in range(connections)]
    per_patient: dict[str, int] = {}
    for message in synthetic_messages(patients, rounds, seed):
        mrn = parse_message(message).field("PID", 3)
        slot = per_patient.setdefault(mrn, len(per_patient) % connections)
        by_conn[slot].append(message)
    codes: Counter[str] = Counter()

    async def one(batch: list[bytes]) -> None:
        async with MllpClient(host, port) as client:
            for message in batch:
                codes[ack_code(await client.send(message))] += 1
                on_sent(1)

    async with asyncio.TaskGroup() as group:
        for batch in by_conn:
            if batch:
                group.create_task(one(batch))
    return codes
