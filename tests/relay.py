"""A TCP relay between the job and sshd that injects network faults for real.

* cut: after N bytes from the server on a connection, close both sides
  (with ``reset``, end the client's side with an RST, as a firewall or a
  rebooted NAT does, instead of a FIN).
* stall: after N bytes, stop forwarding but keep both sockets open, as a dead
  NAT mapping or a pulled cable does (no FIN, no RST).
* delay: hold every chunk for a fixed time in each direction (a long link).
* rate: limit server -> client throughput to this many bytes per second.

The first ``faulty_connections`` connections get the fault; later ones pass
through cleanly, which is how a test lets the job recover.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass

_BUF = 256 * 1024


@dataclass
class Fault:
    cut_after: int | None = None
    stall_after: int | None = None
    faulty_connections: int = 1
    reset: bool = False


def peak_rate(log: list[tuple[float, int]], window: float = 1.0) -> int:
    """The most bytes sent within any ``window`` seconds of ``log`` (a sliding window)."""
    peak, total, start = 0, 0, 0
    for when, size in log:
        total += size
        while log[start][0] <= when - window:
            total -= log[start][1]
            start += 1
        peak = max(peak, total)
    return peak


class Relay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.fault = Fault()
        self.delay = 0.0
        self.rate: float | None = None
        self.bytes_down = 0  # server -> client, all connections
        self.down_log: list[tuple[float, int]] = []  # (monotonic time, bytes) of each server -> client send
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._aborted: set[socket.socket] = set()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def set_fault(
        self,
        *,
        cut_after: int | None = None,
        stall_after: int | None = None,
        connections: int = 1,
        reset: bool = False,
    ) -> None:
        with self._lock:
            self.fault = Fault(cut_after, stall_after, connections, reset)
            self.connections = 0

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_down = 0

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                faulty = self.connections <= self.fault.faulty_connections
                fault = self.fault if faulty else Fault()
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            cut = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, None, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, fault, cut), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, fault: Fault | None, cut: threading.Event) -> None:
        """Copy src -> dst; ``fault`` is set on the server -> client direction only.

        After a cut, the client -> server direction keeps reading and discarding
        until the client closes: closing a socket with unread data sends an RST,
        and an RST makes the client's kernel drop data it already received, which
        would make the relay's byte count lie.
        """
        forwarded = 0
        try:
            while not self._stop.is_set():
                if fault is None and cut.is_set():
                    if not src.recv(_BUF):
                        break
                    continue
                rate = self.rate if fault is not None else None
                # Small reads under a rate limit keep the flow smooth rather than bursty.
                data = src.recv(_BUF if rate is None else 16 * 1024)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                if rate:
                    time.sleep(len(data) / rate)
                if fault is not None:
                    limit = fault.cut_after if fault.cut_after is not None else fault.stall_after
                    if limit is not None and forwarded + len(data) >= limit:
                        data = data[: max(0, limit - forwarded)]
                        self._send(dst, data)
                        if fault.cut_after is not None and fault.reset:
                            self._reset(server=src, client=dst)
                            return
                        if fault.cut_after is not None:
                            cut.set()
                            self._cut(server=src, client=dst)
                            return
                        else:
                            self._stop.wait()  # hold both sockets open, forward nothing
                        return
                    forwarded += len(data)
                self._send(dst, data)
        except OSError:
            if fault is None and cut.is_set():
                with contextlib.suppress(OSError):
                    while src.recv(_BUF):
                        pass
        self._close_pair(src, dst)

    def _send(self, dst: socket.socket, data: bytes) -> None:
        if data:
            dst.sendall(data)
            if dst is not None and self._is_client_side(dst):
                with self._lock:
                    self.bytes_down += len(data)
                    self.down_log.append((time.monotonic(), len(data)))

    def _is_client_side(self, sock: socket.socket) -> bool:
        with contextlib.suppress(OSError):
            return bool(sock.getsockname()[1] == self.port)
        return False

    @staticmethod
    def _cut(server: socket.socket, client: socket.socket) -> None:
        """End the client's connection with a FIN after everything forwarded so far;
        the other direction's pump drains and closes the client side."""
        with contextlib.suppress(OSError):
            server.close()
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _reset(self, server: socket.socket, client: socket.socket) -> None:
        """End the client's connection with an RST: with a zero linger time, close() aborts it.

        The other direction's pump is blocked reading the client socket, which keeps
        it open: shutting down its read side wakes that pump, which closes it.
        """
        with self._lock:
            self._aborted.add(client)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            server.close()

    def _close_pair(self, a: socket.socket, b: socket.socket) -> None:
        for s in (a, b):
            # A shutdown would send a FIN ahead of the RST of an aborted socket.
            if s not in self._aborted:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
