"""Serve a home's reports (`$FEATUREFLOW_HOME/reports`: feature pages, Sankey, plots) on 127.0.0.1.

`featureflow reports` serves them alone; `featureflow ui` serves them beside Dagster's UI, on
FEATUREFLOW_REPORTS_PORT (default 3001), the port the assets' metadata links point to."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

DEFAULT_PORT = 3001
REPORTS_DIR = "reports"  # a home's folder of reports, the one this server serves
FEATURE_PAGES_DIR = "features"  # the feature pages within it (the `feature_pages` asset)
FEATURE_INDEX = f"{FEATURE_PAGES_DIR}/index.html"  # where `/` leads once the pages exist


def reports_port() -> int:
    return int(os.environ.get("FEATUREFLOW_REPORTS_PORT", DEFAULT_PORT))


def reports_url(path: str = "", port: int | None = None) -> str:
    """The URL of a file under reports/ while `featureflow ui` or `featureflow reports` serves them."""
    return f"http://127.0.0.1:{port or reports_port()}/{path.lstrip('/')}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path in ("/", "/index.html") and (Path(self.directory) / FEATURE_INDEX).is_file():
            self.send_response(302)
            self.send_header("Location", f"/{FEATURE_INDEX}")
            self.end_headers()
            return
        if self.path == "/favicon.ico":  # none: say so without a 404 in the browser's console
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # quiet: one line per file would drown the terminal
        pass


def serve_reports(root: Path, port: int) -> http.server.ThreadingHTTPServer:
    """Start serving `root` on 127.0.0.1:`port` in a background thread; `.shutdown()` stops it.
    Raises OSError when the port is taken."""
    Path(root).mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, name="featureflow-reports", daemon=True).start()
    return server
