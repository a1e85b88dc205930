"""The sandboxed model worker, and the pipe protocol it shares with the parent.

Run as ``python -I path/to/_worker.py [limits]`` (``python -m inference._worker`` works too,
but imports the whole package first). This file imports only the standard library, numpy
and onnxruntime, so the sandboxed interpreter never loads the gateway's own code.

Startup, before the first byte of stdin is read:
  close inherited fds -> move the protocol off fd 0/1 -> new network namespace ->
  no_new_privs -> import onnxruntime -> RLIMIT_AS / RLIMIT_CPU -> drop to uid/gid nobody.
Then: read an optional CUSTOM_OPS frame (the bundle's verified ``custom_ops.so``) into a
sealed memfd, read the MODEL frame, set RLIMIT_FSIZE 0, and only then load the custom-op
library (its constructors run here, inside every limit above) and build the session;
answer READY (provider, what is enforced and what is not, and the output layout), and
serve RUN / SELFCHECK frames until EXIT or EOF.

No parent-death signal: Linux sends it when the *thread* that forked exits, and the gateway
restarts workers from pool threads. A worker whose parent dies reads EOF and exits.

Framing: ``<BQ`` (kind, payload length), then the payload; one frame each way per call.
READY is JSON with ``outputs``, ``[[name, dtype], ...]`` (dtype: a numpy type string from
:data:`DTYPES`), the order of every OUTPUTS frame. RUN: ``<QQ`` rows, columns, then the
float32 batch in C order. OUTPUTS: ``<d`` the worker's CPU seconds so far, one ``B`` rank
per output, all outputs' dims as ``Q``, then each output's C-order bytes; every output has
one row per input row. The parent trusts none of it: it bounds each length before reading,
checks ranks, dims and byte counts against the frame, and replaces a worker that breaks the
protocol (see ``inference._pipe``).
"""

from __future__ import annotations

import argparse
import ctypes
import encodings.idna  # noqa: F401  (imported now: nothing can be imported after the uid drop)
import errno
import fcntl
import json
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# frame kinds
MODEL, READY, RUN, OUTPUTS, ERROR, SELFCHECK, REPORT, EXIT, CUSTOM_OPS = range(1, 10)

HEADER = struct.Struct("<BQ")
RUN_SHAPE = struct.Struct("<QQ")
CPU = struct.Struct("<d")
# ONNX tensor element type -> the numpy type string used on the pipe (others are refused)
DTYPES = {
    "tensor(float)": "<f4",
    "tensor(double)": "<f8",
    "tensor(int64)": "<i8",
    "tensor(int32)": "<i4",
    "tensor(bool)": "|b1",
    "tensor(uint8)": "|u1",
}
_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
CUSTOM_OPS_NAME = "custom_ops.so"
_NOBODY = 65534
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_BUFFER = 1 << 16  # the frame buffer's resting size (it grows for a larger frame)
_AT = 16 - HEADER.size  # where a frame starts in the buffer: its payload is 16-byte aligned
MAX_OUTPUTS = 1000  # one writev per frame (IOV_MAX is 1024)
# What the worker does not enforce, whatever the machine (stated in READY and /readyz).
NOT_ENFORCED = {
    "unix_sockets": (
        "NOT enforced: connect() to a filesystem Unix socket is not blocked by the network "
        "namespace; only file permissions for the worker's uid limit it"
    ),
    "filesystem_reads": (
        "NOT enforced: the worker may read any file its uid may read (keys must not be "
        "readable by uid nobody, or by the gateway's uid when it does not run as root)"
    ),
    "same_uid_processes": (
        "NOT enforced: workers share a uid (with the gateway too when it does not run as "
        "root) and may signal processes of that uid; a killed worker is restarted"
    ),
}


def decode_run(payload: memoryview) -> npt.NDArray[np.float32]:
    """The float32 ``[rows, cols]`` batch of a RUN frame (a view of the frame's bytes)."""
    rows, cols = RUN_SHAPE.unpack_from(payload)
    count = rows * cols
    if RUN_SHAPE.size + 4 * count != len(payload):
        raise ValueError("RUN frame length does not match its shape")
    return np.frombuffer(payload, np.float32, count, RUN_SHAPE.size).reshape(rows, cols)


class OutputFrames:
    """Builds OUTPUTS frames for the layout declared at READY, as buffers for ``writev``."""

    def __init__(self, layout: Sequence[tuple[str, str]]) -> None:
        self.names = [name for name, _ in layout]
        self.dtypes = [np.dtype(dtype) for _, dtype in layout]
        self._heads: dict[tuple[Any, ...], bytes] = {}  # (rows, shapes) -> checked header

    def frame(self, cpu_seconds: float, results: Sequence[Any], rows: int) -> list[Any]:
        """The frame: one header, then the output arrays themselves (no copy).

        ``ValueError`` for outputs that do not match the layout or lack a row per input row
        (the parent would refuse the frame); shapes seen before are not checked again.
        """
        key = (rows, *[(a.shape, a.dtype) for a in results])  # dtypes: their hash is cheap
        head = self._heads.get(key)
        if head is None:
            head = self._head(results, rows)
            if len(self._heads) >= 4096:
                self._heads.clear()
            self._heads[key] = head
        return [head[: HEADER.size] + CPU.pack(cpu_seconds) + head[HEADER.size :], *results]

    def _head(self, results: Sequence[Any], rows: int) -> bytes:
        if len(results) != len(self.names):
            raise ValueError(f"model returned {len(results)} outputs, declared {len(self.names)}")
        for name, dtype, array in zip(self.names, self.dtypes, results, strict=True):
            if array.dtype != dtype or not array.shape or array.shape[0] != rows:
                raise ValueError(f"output {name} is {array.dtype} {list(array.shape)}")
        dims = [d for array in results for d in array.shape]
        tail = bytes(a.ndim for a in results) + struct.pack(f"<{len(dims)}Q", *dims)
        size = CPU.size + len(tail) + sum(a.nbytes for a in results)
        return HEADER.pack(OUTPUTS, size) + tail


def output_layout(session: Any) -> list[tuple[str, str]]:
    """``(name, numpy type string)`` per model output, in session order."""
    outputs = session.get_outputs()
    if len(outputs) > MAX_OUTPUTS:
        raise ValueError(f"the model has more than {MAX_OUTPUTS} outputs")
    for output in outputs:
        if output.type not in DTYPES:
            raise ValueError(f"output {output.name} has type {output.type}, not a numeric tensor")
    return [(output.name, DTYPES[output.type]) for output in outputs]


# --- worker side -------------------------------------------------------------------------


class _Frames:
    """Frames from the parent, read into one reused buffer: usually one ``read`` per frame."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(_BUFFER)
        self.start = self.end = _AT

    def read(self) -> tuple[int, memoryview]:
        """The next frame's kind and payload (valid until the next ``read``); EOFError at EOF."""
        if self.start == self.end:  # drained: start again at the front (a small buffer)
            self.start = self.end = _AT
            self.buf = self.buf if len(self.buf) == _BUFFER else bytearray(_BUFFER)
        self._fill(HEADER.size)
        kind, length = HEADER.unpack_from(self.buf, self.start)
        self._fill(HEADER.size + length)
        begin = self.start + HEADER.size
        self.start = begin + length
        return kind, memoryview(self.buf)[begin : self.start]

    def _fill(self, need: int) -> None:
        if self.start + need > len(self.buf):  # a new buffer: views of the old one stay valid
            left = self.buf[self.start : self.end]
            self.buf = bytearray(max(_AT + need, _BUFFER))
            self.buf[_AT : _AT + len(left)] = left
            self.start, self.end = _AT, _AT + len(left)
        view = memoryview(self.buf)
        while self.end - self.start < need:
            got = os.readv(self.fd, [view[self.end :]])
            if got == 0:
                raise EOFError
            self.end += got


def unwritten(views: Sequence[Any], written: int) -> list[memoryview]:
    """What is left of ``views`` after a partial ``writev`` of ``written`` bytes (less
    than their total)."""
    left = [memoryview(v).cast("B") for v in views]
    while written >= len(left[0]):
        written -= len(left.pop(0))
    left[0] = left[0][written:]
    return left


def _write_all(fd: int, parts: Sequence[Any]) -> None:
    """Write one frame, whose header is ``parts[0]``, with ``writev`` (usually one call)."""
    left = HEADER.size + HEADER.unpack_from(parts[0])[1]
    views = list(parts)
    while True:  # a blocking pipe: a write is partial only when a signal interrupts it
        written = os.writev(fd, views)
        left -= written
        if not left:
            return
        views = unwritten(views, written)


def _frame(kind: int, payload: bytes) -> list[bytes]:  # one for _write_all
    return [HEADER.pack(kind, len(payload)), payload]


def _close_inherited_fds() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    os.closerange(3, soft if soft != resource.RLIM_INFINITY else 65536)
    return "closed all inherited fds >= 3; stdio re-pointed to /dev/null"


def _move_stdio() -> tuple[int, int]:
    """Keep the protocol on private fds so a stray print cannot corrupt a frame."""
    fd_in, fd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return fd_in, fd_out


def _enter_network_namespace(libc: ctypes.CDLL) -> str:
    if libc.unshare(_CLONE_NEWNET) == 0:
        return "network namespace (no interfaces)"
    err = ctypes.get_errno()

    def _refuse(*args: Any, **kwargs: Any) -> socket.socket:
        raise PermissionError(errno.EACCES, "network disabled in the model worker")

    socket.socket = _refuse  # type: ignore[assignment, misc]
    return (
        f"NOT enforced by the kernel: unshare(CLONE_NEWNET) failed "
        f"({errno.errorcode.get(err, err)}); only Python's socket.socket is disabled"
    )


def gpu_visible(dev: str = "/dev/nvidiactl") -> bool:
    """Whether this process can see an NVIDIA GPU: the driver's control device exists and
    ``CUDA_VISIBLE_DEVICES`` does not hide every device.

    onnxruntime-gpu lists ``CUDAExecutionProvider`` whether or not there is a GPU, so the
    listing alone would leave a worker on a CPU-only node without its memory limit.
    """
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return os.path.exists(dev)


def _limit_memory(args: argparse.Namespace) -> str:
    if args.memory_bytes <= 0:
        return "not limited"
    resource.setrlimit(resource.RLIMIT_AS, (args.memory_bytes, args.memory_bytes))
    return f"RLIMIT_AS {args.memory_bytes}"


def _set_limits(args: argparse.Namespace, cuda: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    if cuda:
        out["memory"] = (
            f"CUDA arena gpu_mem_limit {args.gpu_mem_limit}; RLIMIT_AS not set "
            "(CUDA reserves a large virtual address space)"
        )
    else:
        out["memory"] = _limit_memory(args)
    if args.cpu_seconds > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_seconds, args.cpu_seconds + 1))
        out["cpu"] = f"RLIMIT_CPU {args.cpu_seconds} s (per worker lifetime; recycled before)"
    else:
        out["cpu"] = "not limited"
    return out


def _sealed_memfd(data: bytes) -> int:
    """An in-memory copy of verified bytes that nobody can change any more (not even us)."""
    fd = os.memfd_create(CUSTOM_OPS_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    return fd


def _drop_privileges(libc: ctypes.CDLL, wanted: bool) -> str:
    if not wanted:
        return "unchanged (disabled by configuration)"
    if os.geteuid() != 0:
        return f"unchanged (uid {os.geteuid()}, not root)"
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)
    return f"uid/gid {_NOBODY} (nobody)"


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory handle listdir itself used
    return fds


def _self_check(request: Mapping[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "env_keys": sorted(os.environ),
        "uid": os.getuid(),
        "open_fds": _open_fds(),
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
        "rlimit_cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
    }
    target = request.get("connect")
    if target:
        try:
            socket.create_connection((str(target[0]), int(target[1])), timeout=2).close()
            report["connect_errno"] = None
        except OSError as exc:
            report["connect_errno"] = exc.errno
            report["connect_error"] = errno.errorcode.get(exc.errno or 0, str(exc))
    return report


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wardgate-model-worker")
    parser.add_argument("--memory-bytes", type=int, default=2 << 30)
    parser.add_argument("--cpu-seconds", type=int, default=600)
    parser.add_argument("--gpu-mem-limit", type=int, default=1 << 30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--keep-uid", action="store_true")
    return parser.parse_args(argv)


def _read_model(frames: _Frames) -> tuple[bytes, bytes | None]:
    """The MODEL frame, and the CUSTOM_OPS frame the parent sends before it (if any)."""
    custom_ops = None
    kind, payload = frames.read()
    if kind == CUSTOM_OPS:
        custom_ops = bytes(payload)
        kind, payload = frames.read()
    if kind != MODEL:
        raise ValueError("expected a MODEL frame")
    return bytes(payload), custom_ops


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    sys.dont_write_bytecode = True
    enforcement = {"fds": _close_inherited_fds()}
    fd_in, fd_out = _move_stdio()
    frames = _Frames(fd_in)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        enforcement["network"] = _enter_network_namespace(libc)
        no_new_privs = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        enforcement["no_new_privs"] = "set" if no_new_privs else "NOT set (prctl failed)"
        import onnxruntime as ort  # after unshare; before the address-space limit

        listed = "CUDAExecutionProvider" in ort.get_available_providers()
        cuda = not args.no_gpu and listed and gpu_visible()
        enforcement.update(_set_limits(args, cuda))
        enforcement["privileges"] = _drop_privileges(libc, not args.keep_uid)
        model_bytes, custom_ops = _read_model(frames)
        ops_fd = _sealed_memfd(custom_ops) if custom_ops is not None else None
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        enforcement["files"] = "RLIMIT_FSIZE 0 (cannot write files)"
        enforcement.update(NOT_ENFORCED)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if ops_fd is None:
            enforcement["custom_ops"] = "none in this bundle"
        else:  # the library's own code first runs here, inside every limit above
            options.register_custom_ops_library(f"/proc/self/fd/{ops_fd}")
            enforcement["custom_ops"] = (
                "custom_ops.so loaded from a sealed in-memory copy of the signed bytes, "
                "after every limit above was in place"
            )
        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"gpu_mem_limit": args.gpu_mem_limit}))
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
        del model_bytes, custom_ops
        layout = output_layout(session)
        provider = session.get_providers()[0]
        if cuda and provider != "CUDAExecutionProvider":  # a GPU, but CUDA would not start
            limit = _limit_memory(args)  # before any request: a CPU worker is always bounded
            enforcement["memory"] = f"{limit} (CUDA did not start; set once the model loaded)"
        ready = {"provider": provider, "enforcement": enforcement, "outputs": layout}
        _write_all(fd_out, _frame(READY, json.dumps(ready).encode()))
    except EOFError:
        return 0
    except Exception as exc:
        failed = f"worker start failed: {type(exc).__name__}: {exc}"
        _write_all(fd_out, _frame(ERROR, failed.encode()))
        return 1
    return _serve(frames, fd_out, session, layout)


def _serve(frames: _Frames, fd_out: int, session: Any, layout: list[tuple[str, str]]) -> int:
    names = [name for name, _ in layout]
    outputs = OutputFrames(layout)
    feed = session.get_inputs()[0].name
    while True:
        try:
            kind, payload = frames.read()
        except EOFError:
            return 0
        if kind == EXIT:
            return 0
        reply: list[Any]
        try:
            if kind == RUN:
                batch = decode_run(payload)
                results = session.run(names, {feed: batch})
                reply = outputs.frame(time.process_time(), results, len(batch))
            elif kind == SELFCHECK:
                report = _self_check(json.loads(bytes(payload) or b"{}"))
                reply = _frame(REPORT, json.dumps(report).encode())
            else:
                raise ValueError(f"unknown frame kind {kind}")
        except Exception as exc:
            reply = _frame(ERROR, f"{type(exc).__name__}: {exc}".encode())
        try:
            _write_all(fd_out, reply)
        except BufferError as exc:  # an output numpy cannot hand over as bytes; nothing sent
            _write_all(fd_out, _frame(ERROR, f"BufferError: {exc}".encode()))


if __name__ == "__main__":
    sys.exit(main())
