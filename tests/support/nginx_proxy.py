"""Debian's nginx as a plain reverse proxy on free loopback ports: the baseline a user would
otherwise put in front of Triton (``bench/gateway.py``).

HTTP/1.1 with keep-alive connections to the upstream, and ``grpc_pass`` (cleartext HTTP/2)
for a gRPC upstream. Everything it writes (config, pid, logs, temp files) is in its own
temporary folder; it runs in the foreground as the current user and is stopped by PID.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway_harness import free_port, stop_process

NGINX = os.environ.get("MEDOPS_NGINX", "/usr/sbin/nginx")
BODY_BUFFER = "4m"
"""Requests of up to this size stay in memory (a 1x3x256x256 float32 tensor is 768 KiB), as
a tuned proxy would keep them, rather than going through a temp file."""


def render_config(
    folder: Path,
    *,
    http_port: int,
    http_upstream: str,
    grpc_port: int | None = None,
    grpc_upstream: str | None = None,
    max_body: str = "256m",
) -> str:
    """The whole ``nginx.conf``: no path outside ``folder``. Upstreams are ``host:port``."""
    user = ""
    if os.geteuid() == 0:  # a root master would hand its workers to "nobody"; keep the caller
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    grpc = ""
    if grpc_port is not None and grpc_upstream is not None:
        grpc = f"""
    upstream grpc_backend {{
        server {grpc_upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{grpc_port} http2;
        location / {{
            grpc_pass grpc://grpc_backend;
            grpc_buffer_size {BODY_BUFFER};
        }}
    }}"""
    return f"""{user}
worker_processes auto;
daemon off;
pid {folder / "nginx.pid"};
lock_file {folder / "nginx.lock"};
error_log {folder / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    # never close a client connection mid-run: after its default 1000 requests nginx sends
    # HTTP/2 GOAWAY, which a gRPC client reports as UNAVAILABLE, killing a benchmark worker
    keepalive_requests 1000000;
{temp}
    client_max_body_size {max_body};
    client_body_buffer_size {BODY_BUFFER};
    upstream http_backend {{
        server {http_upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{http_port};
        location / {{
            proxy_pass http://http_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
        }}
    }}{grpc}
}}
"""


class NginxProxy:
    """nginx in front of ``http_upstream`` (and ``grpc_upstream``), on free loopback ports."""

    def __init__(self, http_upstream: str, grpc_upstream: str | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="medops-nginx-"))
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc_upstream else None
        self.config_path = self.folder / "nginx.conf"
        self.config_path.write_text(
            render_config(
                self.folder,
                http_port=self.http_port,
                http_upstream=http_upstream,
                grpc_port=self.grpc_port,
                grpc_upstream=grpc_upstream,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        assert self.grpc_port is not None, "started without a gRPC upstream"
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def _command(self, *extra: str) -> list[str]:
        # -e: the error log before the config is read, so nothing goes to /var/log
        return [NGINX, "-p", str(self.folder), "-c", str(self.config_path),
                "-e", str(self.folder / "error.log"), *extra]  # fmt: skip

    def check(self) -> None:
        """``nginx -t``: the rendered config parses, with this nginx's modules."""
        done = subprocess.run(self._command("-t"), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"nginx rejects its config: {done.stderr.strip()}")

    def worker_pids(self) -> list[int]:
        """The master's children (the workers), whose CPU is the proxy's cost."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def start(self, timeout_s: float = 20.0) -> NginxProxy:
        if not Path(NGINX).exists():
            raise RuntimeError(f"{NGINX} is missing: run infra/install-system-deps.sh")
        self.check()
        log = open(self.folder / "stderr.log", "wb")  # noqa: SIM115 - the child's stderr
        with log:
            self.proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        ports = [p for p in (self.http_port, self.grpc_port) if p is not None]
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = (self.folder / "error.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {tail}")
            if all(_accepts(p) for p in ports) and self.worker_pids():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not listen on {ports} within {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGTERM to the master: a fast shutdown, workers included
            stop_process(self.proc, group=False, timeout_s=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
