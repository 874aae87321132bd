"""A small threaded HTTP server for the local cloud's non-gRPC endpoints.

Cloud Functions' GenerateUploadUrl hands out a URL that takes an HTTP PUT of the
source zip; this server receives it on loopback.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("taskctl.localcloud.http")

# A handler gets (path, headers, body) and returns (status, content type, body).
PutHandler = Callable[[str, dict[str, str], bytes], tuple[int, str, bytes]]


class HttpServer:
    """Routes PUT requests by path prefix; every other method gets 405."""

    def __init__(self, host: str, port: int, max_body_bytes: int) -> None:
        self._routes: dict[str, PutHandler] = {}
        self._max_body_bytes = max_body_bytes
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def add_put_route(self, prefix: str, handler: PutHandler) -> None:
        self._routes[prefix] = handler

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        # shutdown() waits for serve_forever() to return, so it would block forever
        # on a server that was never started.
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                log.debug("http %s", format % args)

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                header = self.headers.get("Content-Length")
                if header is None or not re.fullmatch(r"[0-9]+", header.strip()):
                    # Without a valid length the body could only be read to EOF,
                    # with no bound on its size.
                    self._reply(
                        HTTPStatus.LENGTH_REQUIRED,
                        "text/plain",
                        b"a PUT needs a valid Content-Length header\n",
                    )
                    return
                length = int(header)
                if length > server._max_body_bytes:
                    self._reply(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        "text/plain",
                        f"body of {length} bytes is over the limit of "
                        f"{server._max_body_bytes} bytes\n".encode(),
                    )
                    return
                body = self.rfile.read(length)
                for prefix, handler in server._routes.items():
                    if self.path.startswith(prefix):
                        headers = {
                            key.lower(): value for key, value in self.headers.items()
                        }
                        self._reply(*handler(self.path, headers, body))
                        return
                self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"no such upload URL\n")

            def do_GET(self) -> None:
                self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"use PUT\n")

            do_POST = do_GET
            do_DELETE = do_GET

        return Handler
