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
    on_home = None  # called before the root is served: writes reports/index.html from what is on disk now

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] in ("/", "/index.html"):
            if self.on_home is not None:
                try:
                    self.on_home()
                except Exception as e:  # a half-written home must not take the server down: say why instead
                    self.send_error(500, f"the reports home could not be built: {type(e).__name__}: {e}")
                    return
            if not (Path(self.directory) / "index.html").is_file() and (Path(self.directory) / FEATURE_INDEX).is_file():
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


def serve_reports(root: Path, port: int, on_home=None) -> http.server.ThreadingHTTPServer:
    """Start serving `root` on 127.0.0.1:`port` in a background thread; `.shutdown()` stops it. `on_home()`, when
    given, rebuilds the reports home (`home.write_home`) each time the root is asked for.
    Raises OSError when the port is taken."""
    Path(root).mkdir(parents=True, exist_ok=True)
    handler = type("Handler", (_Handler,), {"on_home": staticmethod(on_home) if on_home else None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, name="featureflow-reports", daemon=True).start()
    return server


def serve_with_aliases(root: Path, port: int, recorded: set[int], on_home=None) -> tuple[list, list[str]]:
    """The reports on `port`, and on each port in `recorded` (those the links in existing Dagster metadata were
    written with, when another reports port was in use) that is free, so that those links resolve too. Returns the
    servers (the first on `port`; raises OSError when `port` is taken) and one line per recorded port saying what
    was done."""
    servers, notes = [serve_reports(root, port, on_home)], []
    for other in sorted(recorded - {port}):
        try:
            servers.append(serve_reports(root, other, on_home))
            notes.append(f"also serving the reports on 127.0.0.1:{other}, the port links in earlier runs' metadata point to")
        except OSError as e:
            notes.append(f"links in earlier runs' metadata point to 127.0.0.1:{other}, which is taken ({e.strerror}); "
                         f"open http://127.0.0.1:{port}/ instead, or re-materialize with FEATUREFLOW_REPORTS_PORT={port}")
    return servers, notes


def recorded_ports(instance) -> set[int]:
    """Reports ports in the URL metadata of every asset's latest materialization on a Dagster instance."""
    import re

    import dagster as dg

    ports = set()
    for key in instance.get_asset_keys():
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            continue
        for value in event.asset_materialization.metadata.values():
            if not isinstance(value, dg.UrlMetadataValue):
                continue
            m = re.match(r"http://127\.0\.0\.1:(\d+)/", value.url or "")
            if m:
                ports.add(int(m.group(1)))
    return ports
