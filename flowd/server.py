"""The Unix socket: binding it safely, accepting clients, one session per connection.

``bind_socket`` creates the directory 0700 and the socket 0600, replaces a stale socket
file and refuses to take over one a live process answers on (under a lock, so two
flowds starting together cannot both decide it is stale). Before it creates anything
there, the directory must pass the core's ``check_socket_dir`` (a real directory, not a
link, flowd's own, mode 0700), as flowctl checks it before it connects; the lock file is
opened without following a link and must be a regular file. An inherited socket
(systemd) is not bound here, so none of this applies to it. ``Server.serve`` accepts on
a listening socket (bound here or inherited from systemd), checks each peer's uid with
SO_PEERCRED, and runs a reader and a writer per connection: requests are answered one
at a time in order; responses and notifications leave through the bounded outbox.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

from doeff_flow_core.errors import UnsafeSocketDir
from doeff_flow_core.locations import check_socket_dir
from doeff_flow_core.protocol import MAX_REQUEST_BYTES
from doeff_flow_core.tracefiles.safeopen import kind_of
from flowd.errors import (
    LineTooLong,
    SocketDirUnsafe,
    SocketInUse,
    SocketLockUnsafe,
    SocketPathTaken,
    SocketUnavailable,
)
from flowd.jsonrpc import LineSplitter, error_message
from flowd.outbox import STALL_SECONDS, Outbox
from flowd.rpc import RpcInterface
from flowd.subscriptions import Hub, Subscription

log = logging.getLogger("flowd")

BACKLOG: Final = 1024
RECEIVE_BYTES: Final = 64 * 1024
LIVE_CHECK_TIMEOUT: Final = 1.0
FLUSH_TIMEOUT: Final = 5.0  # to send what is queued to a client that is leaving
ACCEPT_PAUSE: Final = 0.1  # after accept fails (out of file descriptors)
ACCEPT_LOG_EVERY: Final = 10.0


def bind_socket(path: Path) -> socket.socket:
    """A listening socket at ``path``, or a StartupError saying why not."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_socket_dir(directory, os.geteuid())
    except UnsafeSocketDir as exc:
        raise SocketDirUnsafe(str(directory), exc.reason) from None
    except OSError as exc:
        raise SocketUnavailable(str(path), exc) from None
    lock = _open_lock(f"{path}.lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            umask = os.umask(0o177)  # the socket is 0600 from its first moment
            try:
                sock.bind(os.fspath(path))
            finally:
                os.umask(umask)
            os.chmod(path, 0o600)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise SocketUnavailable(str(path), exc) from None
        sock.setblocking(False)
        return sock
    finally:
        os.close(lock)  # releases the lock


def _open_lock(path: str) -> int:
    """The lock file, made 0600 if new; never through a link, never anything but a
    regular file (a FIFO or device there is refused, not opened for good)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SocketLockUnsafe(path, "a symbolic link (not followed)") from None
        raise SocketUnavailable(path, exc) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SocketLockUnsafe(path, f"not a regular file ({kind_of(mode)})")
    return fd


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathTaken(str(path))
    if answers(path):
        raise SocketInUse(str(path))
    log.info("replacing stale socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def answers(path: Path) -> bool:
    """Whether something accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(LIVE_CHECK_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # busy, or not ours to judge: never take it over
    finally:
        probe.close()
    return True


def socket_inode(path: Path) -> int:
    return os.stat(path).st_ino


def remove_socket(path: Path, inode: int) -> None:
    """Remove the socket file on the way out, if it is still the one bound here."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            path.unlink()


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ClientConnection:
    """One client: its outbox, its subscriptions, and the tasks they need."""

    def __init__(self, name: str, group: TaskGroup, stall: float) -> None:
        self.name = name
        self.outbox = Outbox(stall=stall, on_overflow=group.cancel_scope.cancel)
        self.subscriptions: dict[str, Subscription] = {}
        self._group = group

    def spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._group.start_soon(job)


class Server:
    def __init__(self, rpc: RpcInterface, hub: Hub, stall: float = STALL_SECONDS) -> None:
        self._rpc = rpc
        self._hub = hub
        self._stall = stall
        self._count = 0

    async def serve(self, sock: socket.socket) -> None:
        listener = await SocketListener.from_socket(sock)
        quiet_until = 0.0
        async with listener, anyio.create_task_group() as group:
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.BrokenResourceError, OSError) as exc:
                    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
                    now = anyio.current_time()
                    if now >= quiet_until:  # one line, not one per retry
                        log.error("accepting a connection: %s (retrying)", cause)
                        quiet_until = now + ACCEPT_LOG_EVERY
                    await anyio.sleep(ACCEPT_PAUSE)
                    continue
                group.start_soon(self._connection, stream)

    async def _connection(self, stream: SocketStream) -> None:
        self._count += 1
        name = f"client {self._count}"
        try:
            uid = peer_uid(stream.extra(SocketAttribute.raw_socket))
        except OSError as exc:
            log.warning("%s: no peer credentials (%s); closed", name, exc)
            await stream.aclose()
            return
        if uid != os.getuid():
            log.warning("%s: uid %d is not this daemon's (%d); closed", name, uid, os.getuid())
            await stream.aclose()
            return
        log.debug("%s: connected", name)
        client: ClientConnection | None = None
        try:
            async with stream, anyio.create_task_group() as group:
                client = ClientConnection(name, group, self._stall)
                try:
                    group.start_soon(self._write, stream, client, group)
                    await self._read(stream, client)
                finally:
                    client.outbox.close()
                    group.cancel_scope.deadline = anyio.current_time() + FLUSH_TIMEOUT
                    for sub in client.subscriptions.values():
                        self._hub.stop(sub)
        except Exception as exc:  # one client's trouble never reaches the others
            log.error("%s: %s: %s", name, type(exc).__name__, exc)
            log.debug("%s", name, exc_info=True)
        finally:
            if client is not None and client.outbox.overflowed:
                log.warning(
                    "%s: stopped reading (nothing sent to it for %g s); cut off",
                    name,
                    client.outbox.stall,
                )
            log.debug("%s: closed", name)

    async def _read(self, stream: SocketStream, client: ClientConnection) -> None:
        splitter = LineSplitter(MAX_REQUEST_BYTES)
        while not client.outbox.done:
            try:
                data = await stream.receive(RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            for line in splitter.feed(data):
                if not await client.outbox.wait_space():
                    return
                await self._rpc.handle_line(client, line)
            if splitter.too_long:
                log.warning(
                    "%s: request line over %d bytes; closed", client.name, MAX_REQUEST_BYTES
                )
                client.outbox.put(error_message(None, LineTooLong(MAX_REQUEST_BYTES)))
                return

    async def _write(
        self, stream: SocketStream, client: ClientConnection, group: TaskGroup
    ) -> None:
        try:
            while (data := await client.outbox.take()) is not None:
                await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            if not isinstance(exc, OSError) or exc.errno in (errno.EPIPE, errno.ECONNRESET):
                log.debug("%s: gone while sending", client.name)
            else:
                log.warning("%s: sending: %s", client.name, exc)
        group.cancel_scope.cancel()
