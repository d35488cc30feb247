"""A local HTTP file server on 127.0.0.1 for download tests: ``Range`` requests, a connection
dropped after N bytes, a throttle, and a log of the requests it saw."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "deeplab-test/1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        cfg = self.server.cfg
        name = self.path.lstrip("/").split("?")[0]
        path = os.path.join(cfg["root"], name)
        rng = self.headers.get("Range")
        cfg["log"].append((name, rng))
        if not os.path.isfile(path):
            self.send_error(404, "Not Found")
            return
        data = open(path, "rb").read()
        start = 0
        if rng and rng.startswith("bytes=") and cfg["ranges"]:
            start = int(rng[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drop = cfg["drop_after"].pop(name, None)
        if drop is not None:
            body = body[:drop]
        for i in range(0, len(body), 16384):
            self.wfile.write(body[i : i + 16384])
            if cfg["delay"]:
                time.sleep(cfg["delay"])
        if drop is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


@contextlib.contextmanager
def serve_folder(root, drop_after=None, delay: float = 0.0, ranges: bool = True):
    """Serves ``root`` on ``http://127.0.0.1:PORT/``.

    Args:
        root: the folder served.
        drop_after: ``{file name: n}``: the first response for that file closes the connection
            after ``n`` body bytes (the headers announce the full length).
        delay: seconds to sleep after each 16 KiB written (a slow server).
        ranges: honour ``Range`` headers (else always send the whole file with 200).

    Yields:
        ``(base_url, log)``: ``log`` lists ``(file name, Range header or None)`` per request.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    log = []
    server.cfg = {
        "root": os.fspath(root), "drop_after": dict(drop_after or {}), "delay": delay,
        "ranges": ranges, "log": log,
    }  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
