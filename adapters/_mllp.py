"""MLLP (Minimal Lower Layer Protocol) over TCP: framing, an asyncio server and a client.

A frame is ``0x0B <message> 0x1C 0x0D``. The server serves many connections at once and
answers each frame on its connection in order. Bad framing (bytes before the start
block, a frame over the size limit) is answered with an AR ACK that says so; the
connection is then closed if the stream can't be resynchronised.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from adapters._ack import AckContext, AckError, build_ack

START = b"\x0b"
END = b"\x1c\x0d"
Handler = Callable[[bytes], Awaitable[bytes]]


def frame(message: bytes) -> bytes:
    return START + message + END


def _framing_nak(reason: str) -> bytes:
    return build_ack("AR", AckContext(), reason, AckError("100", reason))


class MllpServer:
    """Accepts MLLP connections and passes each frame's bytes to ``handler`` for the reply."""

    def __init__(
        self, handler: Handler, host: str, port: int, max_message_bytes: int = 1_048_576
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max = max_message_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        self.on_framing_error: Callable[[str], None] = lambda reason: None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        while not self._closing:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf += chunk
            while buf and not self._closing:
                start = buf.find(START)
                if start != 0:
                    junk = buf if start < 0 else buf[:start]
                    del buf[: len(junk)]
                    if junk.strip():
                        reason = "framing: data before the MLLP start block (0x0B)"
                        self.on_framing_error(reason)
                        writer.write(frame(_framing_nak(reason)))
                        await writer.drain()
                    if start < 0:
                        break
                    continue
                end = buf.find(END, 1)
                if end < 0:
                    if len(buf) > self._max + 3:
                        reason = f"framing: message exceeds {self._max} bytes"
                        self.on_framing_error(reason)
                        writer.write(frame(_framing_nak(reason)))
                        await writer.drain()
                        return
                    break
                message = bytes(buf[1:end])
                del buf[: end + 2]
                reply = await self._handler(message)
                writer.write(frame(reply))
                await writer.drain()

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight frames finish their ACK, then drop connections."""
        if self._server is None:
            return
        self._server.close()
        self._closing = True
        pending = list(self._connections)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
        await self._server.wait_closed()


class MllpClient:
    """One MLLP connection that sends a message and waits for its ACK."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port), self._timeout
        )

    async def send(self, message: bytes) -> bytes:
        """Send one message; return the ACK's bytes (without framing)."""
        self.write(message)
        return await self.read_ack()

    def write(self, message: bytes) -> None:
        """Queue one framed message without waiting (pipelining; pair with ``read_ack``)."""
        if self._writer is None:
            raise ConnectionError("not connected")
        self._writer.write(frame(message))

    async def read_ack(self) -> bytes:
        if self._reader is None or self._writer is None:
            raise ConnectionError("not connected")
        await self._writer.drain()
        await asyncio.wait_for(self._reader.readuntil(START), self._timeout)
        data = await asyncio.wait_for(self._reader.readuntil(END), self._timeout)
        return data[: -len(END)]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None

    async def __aenter__(self) -> MllpClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK ("AA", "AE", "AR", ...), or "" if there is no MSA."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(segment[3:4] or b"|")
            return fields[1].decode() if len(fields) > 1 else ""
    return ""


def send_blocking(host: str, port: int, message: bytes, timeout_s: float) -> bytes:
    """Send one message on a fresh connection and return its ACK (for worker threads)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(frame(message))
        buf = b""
        while END not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("MLLP peer closed before sending an ACK")
            buf += chunk
    start = buf.find(START)
    return buf[start + 1 : buf.find(END)]
