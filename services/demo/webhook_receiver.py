"""The demo's webhook receiver: a customer's HTTPS endpoint stand-in, on a local port in the demo process.

It verifies every delivery's `OpenLedger-Signature` with the helper receivers are told to use, counts the events
per type (deduplicating on the event id, as a receiver must: delivery is at least once), and answers 503 to its
first `fail_first` requests, so the demo shows the retries of an endpoint that was down for a while.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.adapters.webhooks.signing import SignatureVerificationError, verify_signature


class WebhookReceiver:
    def __init__(self, *, fail_first: int = 40) -> None:
        self.secret = ""  # set once the endpoint is registered (the API shows it once)
        self.fail_first = fail_first
        self.requests = 0
        self.refused = 0
        self.bad_signatures = 0
        self.seen: set[str] = set()
        self.by_type: Counter[str] = Counter()
        self.redelivered = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(receiver.receive(body, self.headers.get("OpenLedger-Signature")))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook-receiver", daemon=True)

    def receive(self, body: bytes, signature: str | None) -> int:
        with self._lock:
            self.requests += 1
            if self.requests <= self.fail_first:
                self.refused += 1
                return 503
            try:
                verify_signature(body, signature, self.secret, tolerance=None)
            except SignatureVerificationError:
                self.bad_signatures += 1
                return 400
            event = json.loads(body)
            if event["id"] in self.seen:
                self.redelivered += 1
            else:
                self.seen.add(event["id"])
                self.by_type[event["type"]] += 1
            return 200

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "answered_503_while_down": self.refused,
                    "bad_signatures": self.bad_signatures, "events_received": len(self.seen),
                    "duplicates_ignored": self.redelivered, "by_type": dict(sorted(self.by_type.items()))}
