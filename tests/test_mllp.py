"""MLLP framing and the listener's behaviour over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from adapters import AckContext, AckError, MllpClient, MllpServer, ack_code, build_ack, frame


async def _echo_ack(message: bytes) -> bytes:
    control_id = message.split(b"|")[9].decode() if message.count(b"|") > 9 else ""
    return build_ack("AA", AckContext(control_id=control_id))


def _msg(control_id: str) -> bytes:
    return f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|{control_id}|P|2.5.1\rPID|1||X\r".encode()


async def _server(max_bytes: int = 1_048_576) -> MllpServer:
    server = MllpServer(_echo_ack, "127.0.0.1", 0, max_bytes)
    await server.start()
    return server


def _msa2(ack: bytes) -> str:
    seg = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    return seg.split(b"|")[2].decode()


def test_many_concurrent_connections_each_get_their_own_acks_in_order() -> None:
    async def main() -> None:
        server = await _server()

        async def client(n: int) -> list[str]:
            async with MllpClient("127.0.0.1", server.port) as c:
                for i in range(20):
                    c.write(_msg(f"C{n}-{i}"))
                return [_msa2(await c.read_ack()) for _ in range(20)]

        results = await asyncio.gather(*(client(n) for n in range(25)))
        await server.close()
        for n, ids in enumerate(results):
            assert ids == [f"C{n}-{i}" for i in range(20)]

    asyncio.run(main())


def test_a_frame_split_across_many_tcp_segments_is_reassembled() -> None:
    async def main() -> None:
        server = await _server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for byte in frame(_msg("SPLIT")):
            writer.write(bytes([byte]))
            await writer.drain()
        await reader.readuntil(b"\x0b")
        ack = (await reader.readuntil(b"\x1c\x0d"))[:-2]
        assert ack_code(ack) == "AA" and _msa2(ack) == "SPLIT"
        writer.close()
        await server.close()

    asyncio.run(main())


def test_bytes_before_the_start_block_get_an_ar_naming_the_framing_error() -> None:
    async def main() -> None:
        server = await _server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GARBAGE" + frame(_msg("AFTER")))
        await writer.drain()
        await reader.readuntil(b"\x0b")
        nak = (await reader.readuntil(b"\x1c\x0d"))[:-2]
        assert ack_code(nak) == "AR"
        assert b"start block" in nak and b"ERR|" in nak
        await reader.readuntil(b"\x0b")
        ack = (await reader.readuntil(b"\x1c\x0d"))[:-2]
        assert _msa2(ack) == "AFTER"  # the stream resynchronises on the next start block
        writer.close()
        await server.close()

    asyncio.run(main())


def test_an_oversized_frame_is_refused_and_the_connection_closed() -> None:
    async def main() -> None:
        server = await _server(max_bytes=1000)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x0b" + b"X" * 5000)
        await writer.drain()
        await reader.readuntil(b"\x0b")
        nak = (await reader.readuntil(b"\x1c\x0d"))[:-2]
        assert ack_code(nak) == "AR" and b"exceeds 1000 bytes" in nak
        assert await reader.read() == b""
        await server.close()

    asyncio.run(main())


def test_ack_error_segment_carries_table_0357_code_and_location() -> None:
    ack = build_ack(
        "AR", AckContext(control_id="X1"), "MSH-9 missing", AckError("101", "t", "MSH^1^9")
    )
    segments = ack.decode().split("\r")
    assert segments[1] == "MSA|AR|X1|MSH-9 missing"
    err = segments[2].split("|")
    assert err[0] == "ERR" and err[2] == "MSH^1^9" and err[3].startswith("101^")
    assert err[4] == "E"


@pytest.mark.parametrize("text", ["a|b", "x^y~z&w\\v"])
def test_ack_text_is_escaped_so_it_cannot_break_the_segment(text: str) -> None:
    ack = build_ack("AE", AckContext(), text)
    msa = ack.decode().split("\r")[1]
    assert msa.count("|") == 3


def test_close_stops_accepting_new_connections() -> None:
    async def main() -> None:
        server = await _server()
        port = server.port
        await server.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

    asyncio.run(main())
