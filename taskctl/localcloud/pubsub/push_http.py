"""A minimal HTTP/1.1 client for push requests: one POST, read the status.

In a yappi profile of bench/bench_push.py (2 cores, Python 3.11.7), a push sent with
http.client took about 2.4 times the CPU time of this client, mostly in
parsing the response headers with the email package. http.client in 3.11 also
writes the headers and the body with two ``send`` calls, so with Nagle's
algorithm on, the body of a request on a kept-alive connection can wait for
the server's delayed ACK (up to 40 ms on Linux). This client writes each
request with one ``sendall`` on a TCP_NODELAY socket and parses only the
response headers that framing needs. Errors are http.client's exception types,
so callers handle both clients alike.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import ssl
from typing import Any

# http.client's limits on a response's header lines.
MAX_LINE_BYTES = 65536
MAX_HEADERS = 100
# The header names http.client accepts: no colon, no whitespace first, no CR or
# LF. Values may not contain CR, LF or NUL, so an attribute can neither add a
# header nor end the header block.
_HEADER_NAME = re.compile(r"[^:\s][^:\r\n]*")
_INVALID_VALUE = re.compile(r"[\r\n\0]")
_NO_BODY_STATUSES = frozenset({204, 304})


def _encode_header(name: str, value: str) -> bytes:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"invalid HTTP header name {name!r}")
    if _INVALID_VALUE.search(value):
        raise ValueError(f"invalid HTTP header value {value!r} for {name!r}")
    # Attribute values become header values (push without a wrapper, with
    # metadata) and may hold any Unicode text, so they are sent as UTF-8 octets,
    # which HTTP passes through; http.client's Latin-1 would reject "5€".
    return f"{name}: ".encode("ascii") + value.encode("utf-8") + b"\r\n"


class PushConnection:
    """One kept-alive connection to an origin, reopened when the server closes it."""

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.scheme = scheme
        self.host = host
        default_port = 443 if scheme == "https" else 80
        self.port = port or default_port
        # An IPv6 literal is bracketed in the Host header, as in a URL.
        host_name = f"[{host}]" if ":" in host else host
        if self.port == default_port:
            self._host_header = host_name
        else:
            self._host_header = f"{host_name}:{self.port}"
        self._socket: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self._address: tuple[socket.AddressFamily, Any] | None = None

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def post(
        self, path: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> int:
        """Send one POST and return the response status; the body is discarded."""
        head = [
            f"POST {path} HTTP/1.1\r\nHost: {self._host_header}\r\n".encode("latin-1")
        ]
        head.extend(_encode_header(name, value) for name, value in headers.items())
        head.append(f"Content-Length: {len(body)}\r\n\r\n".encode("ascii"))
        head.append(body)
        request = b"".join(head)

        if self._socket is None:
            self._connect(timeout)
        else:
            self._socket.settimeout(timeout)
        assert self._socket is not None
        self._socket.sendall(request)
        return self._read_response()

    def _connect(self, timeout: float) -> None:
        if self._address is None:
            sock = socket.create_connection((self.host, self.port), timeout)
            self._address = (sock.family, sock.getpeername())
        else:
            # The address the last lookup led to, so a push does not pay for a
            # name lookup. A failure drops it, so the next push looks up again.
            family, address = self._address
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except BaseException:
                sock.close()
                self._address = None
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=self.host)
        self._socket = sock
        self._reader = sock.makefile("rb")

    def _read_response(self) -> int:
        while True:
            status, version, fields = self._read_head()
            # 100 Continue is interim and followed by the real response, as
            # http.client treats it. Other 1xx statuses end the exchange.
            if status != 100:
                break
        keep_alive = self._read_body(status, fields)
        connection = fields.get("connection", "").lower()
        if version == "HTTP/1.0":
            # HTTP/1.0 closes after each response unless asked to keep alive.
            keep_alive = keep_alive and "keep-alive" in connection
        if not keep_alive or "close" in connection:
            self.close()
        return status

    def _read_line(self) -> bytes:
        assert self._reader is not None
        line = self._reader.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES:
            raise http.client.LineTooLong("response header line")
        return line

    def _read_head(self) -> tuple[int, str, dict[str, str]]:
        status_line = self._read_line()
        if not status_line:
            raise http.client.RemoteDisconnected(
                "remote end closed connection without response"
            )
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise http.client.BadStatusLine(repr(status_line))
        try:
            status = int(parts[1])
        except ValueError:
            raise http.client.BadStatusLine(repr(status_line)) from None
        if not 100 <= status <= 999:
            raise http.client.BadStatusLine(repr(status_line))

        fields: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._read_line()
            if line in (b"\r\n", b"\n", b""):
                return status, parts[0], fields
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")

    def _read_body(self, status: int, fields: dict[str, str]) -> bool:
        """Read and discard the body; return whether the connection can be reused."""
        assert self._reader is not None
        if status < 200 or status in _NO_BODY_STATUSES:
            return True
        if "chunked" in fields.get("transfer-encoding", "").lower():
            self._read_chunked()
            return True
        length_field = fields.get("content-length")
        if length_field is None:
            # The body runs until the server closes the connection.
            while self._reader.read(65536):
                pass
            return False
        try:
            length = int(length_field)
        except ValueError:
            raise http.client.HTTPException(
                f"invalid Content-Length {length_field!r}"
            ) from None
        data = self._reader.read(length)
        if len(data) < length:
            raise http.client.IncompleteRead(data, length - len(data))
        return True

    def _read_chunked(self) -> None:
        assert self._reader is not None
        while True:
            size_line = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException(
                    f"invalid chunk size {size_line!r}"
                ) from None
            if size == 0:
                break
            data = self._reader.read(size + 2)
            if len(data) < size + 2:
                raise http.client.IncompleteRead(data, size + 2 - len(data))
        # Trailer fields, up to the empty line.
        while self._read_line() not in (b"\r\n", b"\n", b""):
            pass
