"""The local cloud process: every emulated service behind one gRPC port."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import asdict
from pathlib import Path

import grpc

from taskctl.localcloud.children import free_port
from taskctl.localcloud.firestore.service import FirestoreService
from taskctl.localcloud.functions.service import FunctionsService
from taskctl.localcloud.httpserver import HttpServer
from taskctl.localcloud.logging.service import LoggingService
from taskctl.localcloud.pubsub.service import PubSubService
from taskctl.localcloud.resourcemanager import ResourceManagerService
from taskctl.localcloud.runtime import RUNTIME_FILE, RuntimeInfo
from taskctl.localcloud.smtp import SmtpSink
from taskctl.localcloud.storage import StorageEmulator

log = logging.getLogger("taskctl.localcloud")

LOOPBACK = "127.0.0.1"
# Function source zips larger than this are rejected at upload.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024


class LocalCloud:
    """Starts and stops the services; the state directory contains all their data."""

    def __init__(self, state_dir: Path, port: int = 0, host: str = LOOPBACK) -> None:
        if host not in (LOOPBACK, "::1", "localhost"):
            raise ValueError(f"the local cloud listens on loopback only, not {host!r}")
        self.state_dir = state_dir.resolve()
        self.host = host
        self._requested_port = port
        self._stopped = threading.Event()
        self._grpc: grpc.Server | None = None
        self.info: RuntimeInfo | None = None

    def start(self) -> RuntimeInfo:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)

        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self._requested_port}")
        if grpc_port == 0:
            raise OSError(f"cannot listen on {self.host}:{self._requested_port}")

        self.http = HttpServer(self.host, 0, MAX_UPLOAD_BYTES)
        self.storage = StorageEmulator(self.state_dir, self.host, free_port(self.host))
        self.smtp = SmtpSink(self.state_dir, self.host)
        self.pubsub = PubSubService(self.state_dir)
        self.logging = LoggingService(self.state_dir)
        self.resource_manager = ResourceManagerService()
        self.firestore = FirestoreService(self.state_dir)
        self.functions = FunctionsService(
            self.state_dir,
            pubsub=self.pubsub,
            logging=self.logging,
            http=self.http,
            host=self.host,
            grpc_endpoint=f"{self.host}:{grpc_port}",
            storage_endpoint=self.storage.endpoint,
            smtp_port=self.smtp.port,
        )
        for service in (
            self.pubsub,
            self.logging,
            self.resource_manager,
            self.firestore,
            self.functions,
        ):
            service.register(self._grpc)

        self.storage.start()
        self.smtp.start()
        self.http.start()
        self._grpc.start()
        self.pubsub.start()
        self.logging.start()
        self.firestore.start()
        self.functions.start()

        self.info = RuntimeInfo(
            pid=os.getpid(),
            host=self.host,
            grpc_port=grpc_port,
            http_port=self.http.port,
            storage_port=self.storage.port,
            smtp_port=self.smtp.port,
            state_dir=str(self.state_dir),
            started_at=time.time(),
        )
        runtime_path = self.state_dir / RUNTIME_FILE
        temporary = runtime_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self.info), indent=2))
        temporary.replace(runtime_path)
        log.info(
            "local cloud listening on %s (loopback only), state in %s",
            self.info.grpc_endpoint,
            self.state_dir,
        )
        return self.info

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        """Stop every service that was started; safe after a failed start."""
        if self._stopped.is_set():
            return
        log.info("local cloud stopping")
        functions = getattr(self, "functions", None)
        if functions is not None:
            functions.stop()
        logging_service = getattr(self, "logging", None)
        if logging_service is not None:
            # End open log tails first, so the gRPC grace period does not wait on them.
            logging_service.tails.close()
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()
        for name in ("pubsub", "logging", "firestore", "http", "storage", "smtp"):
            service = getattr(self, name, None)
            if service is not None:
                service.stop()
        (self.state_dir / RUNTIME_FILE).unlink(missing_ok=True)
        self._stopped.set()
        log.info("local cloud stopped")
