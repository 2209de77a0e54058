"""The prebuilt OHIF viewer (npm ``@ohif/app``'s ``dist/``, fetched by ``infra/ohif/install.sh``
into ``.ohif/``) served on loopback with its DICOMweb data source pointed at a PACS through
the same origin (``/dicom-web`` is proxied, so the browser meets no cross-origin rule).

The viewer's own ``app-config.js`` is served with one change: its data source, the public demo
server, replaced by ``/dicom-web``.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import httpx
from gateway_harness import ROOT, free_port

DIST = ROOT / ".ohif" / "package" / "dist"
DEMO_SOURCE = "https://d14fa38qiwhyfd.cloudfront.net/dicomweb"


def app_config(dist: Path = DIST) -> bytes:
    text = (dist / "app-config.js").read_text()
    if DEMO_SOURCE not in text:
        raise AssertionError(f"{dist}/app-config.js no longer names the demo data source")
    text = text.replace(DEMO_SOURCE, "/dicom-web")
    # Orthanc is a live DICOMweb server, not a static one, and renders thumbnails itself
    text = text.replace("staticWado: true", "staticWado: false")
    return text.encode()


class OhifServer:
    """The viewer on a free loopback port, its ``/dicom-web`` forwarded to ``dicomweb``."""

    def __init__(self, dicomweb: str, dist: Path = DIST) -> None:
        if not (dist / "index.html").exists():
            raise AssertionError(f"{dist} is missing: run infra/ohif/install.sh (make ohif)")
        self.dist, self.dicomweb = dist, dicomweb.rstrip("/")
        self.port = free_port()
        config = app_config(dist)
        upstream = httpx.Client(timeout=60)
        root = dist.resolve()
        server_self = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *_: Any) -> None:  # quiet: the test reads the page
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/app-config.js":
                    self._send(200, "application/javascript", config)
                elif path.startswith("/dicom-web/"):
                    target = server_self.dicomweb + self.path[len("/dicom-web") :]
                    headers = {k: v for k, v in self.headers.items() if k.lower() == "accept"}
                    r = upstream.get(target, headers=headers)
                    self._send(r.status_code, r.headers.get("content-type", ""), r.content)
                elif path != "/" and (root / path.lstrip("/")).resolve().is_file():
                    super().do_GET()
                else:  # the single-page app's own routes
                    self._send(200, "text/html", (root / "index.html").read_bytes())

            def _send(self, status: int, media: str, body: bytes) -> None:
                self.send_response(status)
                if media:
                    self.send_header("content-type", media)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._upstream = upstream

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OhifServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._upstream.close()
