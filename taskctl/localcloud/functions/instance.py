"""One running revision of a function: functions-framework as a child process."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.client
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from taskctl.localcloud import children
from taskctl.localcloud.children import free_port

log = logging.getLogger("taskctl.localcloud.functions")

# Cloud Run scales a function out to more instances under load, each serving
# max_instance_request_concurrency requests at once. The local cloud runs one
# gunicorn with up to this many single-threaded worker processes in their place.
# Threaded workers are avoided: with gunicorn 27.0.1 they served pushes over
# Pub/Sub's kept-alive connections at about 20 per second in bench/bench_push.py,
# where sync workers kept up with direct requests.
MAX_LOCAL_WORKERS = 4
# gunicorn waits this long (its graceful_timeout default, 30 s) for in-flight
# requests after SIGTERM; the extra seconds cover its own shutdown.
STOP_GRACE_SECONDS = 35.0
_RECENT_LINES = 20


# The kernel sends the parent-death signal that children.command requests when
# the *thread* that forked the child exits, not the process. Deploys run on
# short-lived threads, so every instance is forked from this one thread, which
# lives as long as the local cloud.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="instance-spawner"
)


class InstanceError(Exception):
    """An instance did not start; the message includes its last output lines."""


@dataclass(frozen=True)
class InstanceSpec:
    project: str
    location: str
    function_id: str
    revision_name: str
    source_dir: Path
    entry_point: str
    signature_type: str  # "cloudevent" or "http"
    timeout_seconds: int
    concurrency: int
    max_instances: int
    environment_variables: dict[str, str] = field(default_factory=dict)


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # gunicorn binds with SO_REUSEADDR, so connections of an earlier
        # instance in TIME_WAIT do not keep it from the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Instance:
    """A functions-framework process serving one revision on a loopback port."""

    def __init__(
        self,
        spec: InstanceSpec,
        *,
        host: str,
        grpc_endpoint: str,
        storage_endpoint: str,
        container_log: Any,
        preferred_port: int = 0,
        smtp_port: int = 0,
    ) -> None:
        self.spec = spec
        self.host = host
        self._grpc_endpoint = grpc_endpoint
        self._storage_endpoint = storage_endpoint
        self._smtp_port = smtp_port
        self._container_log = container_log
        if preferred_port and _port_is_free(host, preferred_port):
            self.port = preferred_port
        else:
            self.port = free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._pumps: list[threading.Thread] = []
        self._recent: collections.deque[str] = collections.deque(maxlen=_RECENT_LINES)
        self._log_failures = 0
        self._stopping = False
        # Called with the instance and its exit code when a started instance
        # exits without stop() or kill().
        self.on_exit: Callable[[Instance, int], None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        spec = self.spec
        environment = dict(os.environ)
        # functions-framework 3.x reads these to configure gunicorn. With one
        # thread per worker, gunicorn's timeout restarts a worker whose request
        # runs past timeout_seconds, and the push then fails as a 504 would.
        workers = min(spec.max_instances * spec.concurrency, MAX_LOCAL_WORKERS)
        environment.update(
            {
                "WORKERS": str(max(1, workers)),
                "THREADS": "1",
                "CLOUD_RUN_TIMEOUT_SECONDS": str(spec.timeout_seconds),
            }
        )
        environment.update(spec.environment_variables)
        if self._smtp_port and "SMTP_HOST" not in spec.environment_variables:
            # The local cloud's SMTP sink, unless the function names its own server.
            environment.update(
                {
                    "SMTP_HOST": self.host,
                    "SMTP_PORT": str(self._smtp_port),
                    "SMTP_TLS": "none",
                }
            )
        environment.update(
            {
                "GOOGLE_CLOUD_PROJECT": spec.project,
                "K_SERVICE": spec.function_id,
                "K_REVISION": spec.revision_name,
                "K_CONFIGURATION": spec.function_id,
                "PORT": str(self.port),
                "FUNCTION_TARGET": spec.entry_point,
                "FUNCTION_SIGNATURE_TYPE": spec.signature_type,
                "PUBSUB_EMULATOR_HOST": self._grpc_endpoint,
                "FIRESTORE_EMULATOR_HOST": self._grpc_endpoint,
                "STORAGE_EMULATOR_HOST": self._storage_endpoint,
                "PYTHONUNBUFFERED": "1",
                # Google's auth library would otherwise probe the metadata server
                # when a client finds no credentials; nothing local should leave
                # loopback.
                "NO_GCE_CHECK": "true",
            }
        )
        return environment

    def start(self, timeout: float) -> None:
        """Start the process and wait until it responds to HTTP, else raise InstanceError."""
        spec = self.spec
        command = children.command(
            "functions_framework",
            "--target",
            spec.entry_point,
            "--signature-type",
            spec.signature_type,
            "--source",
            str(spec.source_dir / "main.py"),
            "--host",
            self.host,
            "--port",
            str(self.port),
        )
        self._process = _SPAWNER.submit(
            subprocess.Popen,
            command,
            cwd=spec.source_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own process group, so _kill_group also reaches gunicorn's
            # workers when the master is gone.
            start_new_session=True,
        ).result()
        assert self._process.stdout is not None and self._process.stderr is not None
        if self._stopping:
            # stop() or kill() ran while the process was being forked.
            self._kill_group()
            self._process.wait()
            raise InstanceError("the instance was stopped while it was starting")
        for stream_name, stream in (
            ("stdout", self._process.stdout),
            ("stderr", self._process.stderr),
        ):
            pump = threading.Thread(
                target=self._pump,
                args=(stream_name, stream),
                name=f"pump-{spec.revision_name}-{stream_name}",
                daemon=True,
            )
            pump.start()
            self._pumps.append(pump)
        log.info(
            "instance revision=%s pid=%s starting on %s",
            spec.revision_name,
            self._process.pid,
            self.url,
        )
        self._wait_ready(timeout)
        log.info("instance revision=%s ready on %s", spec.revision_name, self.url)
        threading.Thread(
            target=self._watch, name=f"watch-{spec.revision_name}", daemon=True
        ).start()

    def _watch(self) -> None:
        assert self._process is not None
        code = self._process.wait()
        if not self._stopping:
            # Workers of a master that died keep the port open until they notice.
            self._kill_group()
        self._join_pumps()
        if not self._stopping and self.on_exit is not None:
            self.on_exit(self, code)

    def _kill_group(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._join_pumps()
                raise InstanceError(
                    f"functions-framework exited with code {code} during start-up"
                    f"{self.recent_output()}"
                )
            if self._answers_http():
                return
            time.sleep(0.1)
        self.kill()
        raise InstanceError(
            f"functions-framework did not respond to HTTP on port {self.port} within "
            f"{timeout:.0f} s{self.recent_output()}"
        )

    def _answers_http(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def recent_output(self) -> str:
        if not self._recent:
            return " (no output)"
        return "; last output lines:\n" + "\n".join(self._recent)

    def _pump(self, stream_name: str, stream: IO[bytes]) -> None:
        spec = self.spec
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._recent.append(line)
            try:
                self._container_log.write_container_line(
                    project=spec.project,
                    service_name=spec.function_id,
                    revision_name=spec.revision_name,
                    location=spec.location,
                    stream=stream_name,
                    line=line,
                    timestamp=time.time(),
                )
            except Exception:
                self._log_failures += 1
                # Log the first failure and then every 100th, not one per line.
                if self._log_failures % 100 == 1:
                    log.exception(
                        "writing a log line of revision=%s failed (%s failures so far)",
                        spec.revision_name,
                        self._log_failures,
                    )
        stream.close()

    def _join_pumps(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def finished(self) -> bool:
        """Whether stop() or kill() was called and the process has exited."""
        return self._stopping and not self.running

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Send SIGTERM, so gunicorn finishes in-flight requests; kill after grace.

        The kill goes to the whole process group, and so does a last SIGKILL
        after the master exited, because a worker hung in a blocking call would
        otherwise outlive its master with PPID 1.
        """
        self._stopping = True
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "instance revision=%s did not stop within %.0f s; killing its "
                    "process group",
                    self.spec.revision_name,
                    grace,
                )
                self._kill_group()
                process.wait()
        self._kill_group()
        self._join_pumps()
        log.info(
            "instance revision=%s stopped with code %s",
            self.spec.revision_name,
            process.returncode,
        )

    def kill(self) -> None:
        self._stopping = True
        if self._process is not None and self._process.poll() is None:
            self._kill_group()
            self._process.wait()
        self._join_pumps()
