"""A folder served over http on 127.0.0.1 (a real http.server in a thread), for the remote-input tests."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Served:
    """`folder` at `url`; `requests` lists the paths it was asked for, in order. close() stops it."""

    def __init__(self, folder):
        self.folder, self.requests = folder, []
        served = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                served.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
