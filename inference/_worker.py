"""The sandboxed model worker, and the pipe framing it shares with the parent.

Run as ``python -I path/to/_worker.py [limits]`` (``python -m inference._worker`` works too,
but imports the whole package first). This file imports only the standard library, numpy
and onnxruntime, so the sandboxed interpreter never loads the gateway's own code.

Startup, before the first byte of stdin is read:
  close inherited fds -> move the protocol off fd 0/1 -> new network namespace ->
  no_new_privs -> import onnxruntime -> RLIMIT_AS / RLIMIT_CPU -> drop to uid/gid nobody.
Then: read an optional CUSTOM_OPS frame (the bundle's verified ``custom_ops.so``) into a
sealed memfd, read the MODEL frame, set RLIMIT_FSIZE 0, and only then load the custom-op
library (its constructors run here, inside every limit above) and build the session;
answer READY (provider + what is enforced, and what is not), and serve RUN / SELFCHECK
frames until EXIT or EOF.

No parent-death signal: Linux sends it when the *thread* that forked exits, and the gateway
restarts workers from pool threads. A worker whose parent dies reads EOF and exits.

Framing: ``<BQ`` (kind, payload length) then the payload. Arrays travel as raw bytes with a
small header (name, dtype, shape): no JSON on the hot path.
"""

from __future__ import annotations

import argparse
import ctypes
import encodings.idna  # noqa: F401  (imported now: nothing can be imported after the uid drop)
import errno
import fcntl
import json
import math
import os
import resource
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

# frame kinds
MODEL, READY, RUN, OUTPUTS, ERROR, SELFCHECK, REPORT, EXIT, CUSTOM_OPS = range(1, 10)

HEADER = struct.Struct("<BQ")
_COUNT = struct.Struct("<H")
_CPU = struct.Struct("<d")
_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|b1", "|u1"})
_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
CUSTOM_OPS_NAME = "custom_ops.so"
_NOBODY = 65534
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
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


def encode_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """Pack named arrays: count, then per array name, dtype, shape and raw C-order bytes."""
    parts = [_COUNT.pack(len(arrays))]
    for name, array in arrays.items():
        arr = np.ascontiguousarray(array)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dtype, copy=False)
        dt, nm = dtype.str.encode(), name.encode()
        parts.append(struct.pack(f"<H{len(nm)}sB{len(dt)}sB", len(nm), nm, len(dt), dt, arr.ndim))
        parts.append(struct.pack(f"<{arr.ndim}Q", *arr.shape))
        parts.append(arr.tobytes())
    return b"".join(parts)


def decode_arrays(payload: bytes | bytearray | memoryview) -> dict[str, npt.NDArray[Any]]:
    """Inverse of :func:`encode_arrays`; refuses dtypes outside a small numeric allowlist."""
    view = memoryview(payload)
    (count,) = _COUNT.unpack_from(view, 0)
    pos = _COUNT.size
    out: dict[str, npt.NDArray[Any]] = {}
    for _ in range(count):
        (nlen,) = struct.unpack_from("<H", view, pos)
        name = bytes(view[pos + 2 : pos + 2 + nlen]).decode()
        pos += 2 + nlen
        dlen = view[pos]
        dtype_str = bytes(view[pos + 1 : pos + 1 + dlen]).decode()
        pos += 1 + dlen
        if dtype_str not in _DTYPES:
            raise ValueError(f"dtype {dtype_str} is not allowed on the sandbox pipe")
        ndim = view[pos]
        pos += 1
        shape = struct.unpack_from(f"<{ndim}Q", view, pos)
        pos += 8 * ndim
        dtype = np.dtype(dtype_str)
        nbytes = math.prod(shape) * dtype.itemsize  # np.prod costs ~3 us per array
        if pos + nbytes > len(view):
            raise ValueError("truncated array frame")
        out[name] = np.frombuffer(view[pos : pos + nbytes], dtype=dtype).reshape(shape)
        pos += nbytes
    return out


def encode_outputs(cpu_seconds: float, arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    return _CPU.pack(cpu_seconds) + encode_arrays(arrays)


def decode_outputs(payload: bytes | bytearray) -> tuple[float, dict[str, npt.NDArray[Any]]]:
    (cpu,) = _CPU.unpack_from(payload, 0)
    return cpu, decode_arrays(memoryview(payload)[_CPU.size :])


# --- worker side -------------------------------------------------------------------------


def _read_frame(rfile: BinaryIO) -> tuple[int, bytes]:
    header = rfile.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError
    kind, length = HEADER.unpack(header)
    payload = rfile.read(length)
    if len(payload) < length:
        raise EOFError
    return kind, payload


def _write_frame(wfile: BinaryIO, kind: int, payload: bytes) -> None:
    wfile.write(HEADER.pack(kind, len(payload)))
    wfile.write(payload)
    wfile.flush()


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


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


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


def _no_new_privs(libc: ctypes.CDLL) -> bool:
    return bool(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)


def _set_limits(args: argparse.Namespace, cuda: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    if cuda:
        out["memory"] = (
            f"CUDA arena gpu_mem_limit {args.gpu_mem_limit}; RLIMIT_AS not set "
            "(CUDA reserves a large virtual address space)"
        )
    elif args.memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_bytes, args.memory_bytes))
        out["memory"] = f"RLIMIT_AS {args.memory_bytes}"
    else:
        out["memory"] = "not limited"
    if args.cpu_seconds > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_seconds, args.cpu_seconds + 1))
        out["cpu"] = f"RLIMIT_CPU {args.cpu_seconds} s (per worker lifetime; recycled before)"
    else:
        out["cpu"] = "not limited"
    return out


def _no_file_writes() -> str:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    return "RLIMIT_FSIZE 0 (cannot write files)"


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


def _read_model(rfile: BinaryIO) -> tuple[bytes, bytes | None]:
    """The MODEL frame, and the CUSTOM_OPS frame the parent sends before it (if any)."""
    custom_ops = None
    kind, payload = _read_frame(rfile)
    if kind == CUSTOM_OPS:
        custom_ops = payload
        kind, payload = _read_frame(rfile)
    if kind != MODEL:
        raise ValueError("expected a MODEL frame")
    return payload, custom_ops


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    sys.dont_write_bytecode = True
    enforcement = {"fds": _close_inherited_fds()}
    fd_in, fd_out = _move_stdio()
    rfile, wfile = os.fdopen(fd_in, "rb"), os.fdopen(fd_out, "wb")
    try:
        libc = _libc()
        enforcement["network"] = _enter_network_namespace(libc)
        enforcement["no_new_privs"] = "set" if _no_new_privs(libc) else "NOT set (prctl failed)"
        import onnxruntime as ort  # after unshare; before the address-space limit

        cuda = not args.no_gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        enforcement.update(_set_limits(args, cuda))
        enforcement["privileges"] = _drop_privileges(libc, not args.keep_uid)
        model_bytes, custom_ops = _read_model(rfile)
        ops_fd = _sealed_memfd(custom_ops) if custom_ops is not None else None
        enforcement["files"] = _no_file_writes()
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
        output_names = [o.name for o in session.get_outputs()]
        ready = {"provider": session.get_providers()[0], "enforcement": enforcement}
        _write_frame(wfile, READY, json.dumps(ready).encode())
    except EOFError:
        return 0
    except Exception as exc:
        _write_frame(wfile, ERROR, f"worker start failed: {type(exc).__name__}: {exc}".encode())
        return 1
    return _serve(rfile, wfile, session, output_names)


def _serve(rfile: BinaryIO, wfile: BinaryIO, session: Any, output_names: list[str]) -> int:
    while True:
        try:
            kind, payload = _read_frame(rfile)
        except EOFError:
            return 0
        if kind == EXIT:
            return 0
        try:
            if kind == RUN:
                results = session.run(output_names, decode_arrays(payload))
                usage = resource.getrusage(resource.RUSAGE_SELF)
                cpu = usage.ru_utime + usage.ru_stime
                reply = encode_outputs(cpu, dict(zip(output_names, results, strict=True)))
                _write_frame(wfile, OUTPUTS, reply)
            elif kind == SELFCHECK:
                report = _self_check(json.loads(payload or b"{}"))
                _write_frame(wfile, REPORT, json.dumps(report).encode())
            else:
                _write_frame(wfile, ERROR, f"unknown frame kind {kind}".encode())
        except Exception as exc:
            _write_frame(wfile, ERROR, f"{type(exc).__name__}: {exc}".encode())


if __name__ == "__main__":
    sys.exit(main())
