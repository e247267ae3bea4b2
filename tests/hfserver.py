"""A real HTTP server on 127.0.0.1 that plays huggingface.co from the real captures.

Owns: serving `/api/daily_papers?date=D&limit=N&p=P` from the corpus and fixture
captures (fixtures win; a day with no file is `[]`; no `limit` means HF's cap of 50),
the listing page at `/papers?date=D` and `/papers/date/D` (only 2024-08-01 exists),
ETag / Last-Modified on every 200 and 304 on a matching If-None-Match, a request
log, per-day body overrides and scripted faults. Does not own: any assertion.

    with HFServer() as hf:
        hf.add_fault("/api/", Fault(status=500))        # the next /api/ request gets a 500
        hf.set_api_body(date(2024, 8, 1), b"[]")         # then the real handler serves this
        ... httpx against hf.base_url ...
        hf.requests                                      # [(method, path, headers), ...]

The captures come from tests/data (`tests/testdata.py`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from tests.testdata import HF, corpus_day

REPO = Path(__file__).resolve().parent.parent
LAST_MODIFIED = email.utils.formatdate(
    dt.datetime(2026, 8, 21, 12, 0, tzinfo=dt.UTC).timestamp(), usegmt=True
)
DEFAULT_LIMIT = 50  # what HF returns without `limit` (STRUCTURE.md §2)


@dataclass
class Fault:
    """One scripted response, served instead of the real answer to one request.

    `truncate_after`: send the full Content-Length but only this many body bytes, then
    close. `drop`: close the connection without any response. `delay`: seconds to
    wait before answering (or before dropping). `trickle`: send the headers at once, then
    the body one byte every `trickle` seconds (each read is quick, the whole is not),
    until it is sent or the client hangs up.
    """

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    truncate_after: int | None = None
    drop: bool = False
    real_body: bool = False  # serve the real answer's body (with status/truncation applied)
    chunked: bool = False  # Transfer-Encoding: chunked, so no Content-Length up front
    trickle: float | None = None  # seconds between body bytes


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]


class HFServer:
    """Context manager: starts on 127.0.0.1 port 0 in a background thread."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.in_flight = 0  # requests being answered right now
        self.max_in_flight = 0  # the most answered at once (to check client concurrency)
        self._faults: dict[str, deque[Fault]] = {}
        self._api_bodies: dict[dt.date, bytes] = {}
        self._html_bodies: dict[dt.date, bytes] = {}
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.hf = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HFServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ scripting

    def add_fault(self, path_prefix: str, *faults: Fault) -> None:
        """Queue responses for the next requests whose path starts with `path_prefix`."""
        with self._lock:
            self._faults.setdefault(path_prefix, deque()).extend(faults)

    def clear_faults(self) -> None:
        """Drop every queued fault: the source works again."""
        with self._lock:
            self._faults.clear()

    def set_api_body(self, day: dt.date, body: bytes) -> None:
        """Serve `body` (instead of the capture) as the full API list for `day`."""
        with self._lock:
            self._api_bodies[day] = body

    def set_html_body(self, day: dt.date, body: bytes) -> None:
        """Serve `body` as the listing page for `day`."""
        with self._lock:
            self._html_bodies[day] = body

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    # ------------------------------------------------------------------ the real answers

    def api_capture(self, day: dt.date) -> bytes | None:
        if day in self._api_bodies:
            return self._api_bodies[day]
        for path in (
            HF / f"api-daily_papers-{day}.json",
            corpus_day(day),
        ):
            if path.is_file():
                return path.read_bytes()
        return None

    def html_capture(self, day: dt.date) -> bytes | None:
        if day in self._html_bodies:
            return self._html_bodies[day]
        path = HF / f"papers-page-{day}.html"
        return path.read_bytes() if path.is_file() else None

    def next_fault(self, path: str) -> Fault | None:
        with self._lock:
            for prefix, queue in self._faults.items():
                if queue and path.startswith(prefix):
                    return queue.popleft()
        return None

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    hf: HFServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up (timeouts in tests) are expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """No per-request stderr noise; the request log is `HFServer.requests`."""

    def do_GET(self) -> None:
        hf = self.server.hf
        hf.log(Request("GET", self.path, dict(self.headers.items())))
        hf.enter()
        try:
            self._answer(hf)
        finally:
            hf.leave()

    def _answer(self, hf: HFServer) -> None:
        fault = hf.next_fault(self.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop:
            self._hang_up()
            return
        status, headers, body = self._real_answer(hf)
        if fault is not None:
            status = fault.status
            headers = {**(headers if fault.real_body else {}), **fault.headers}
            body = body if fault.real_body else fault.body
        if fault is not None and fault.chunked:
            self._send_chunked(status, headers, body)
        elif fault is not None and fault.trickle is not None:
            self._send_trickle(status, headers, body, fault.trickle)
        else:
            self._send(status, headers, body, fault.truncate_after if fault else None)

    def _real_answer(self, hf: HFServer) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/api/daily_papers":
            day = _day(query.get("date", ""))
            if day is None:
                return _json_error(400, "date must be YYYY-MM-DD")
            body = _page(hf.api_capture(day), query)
            return self._maybe_not_modified(body, "application/json; charset=utf-8")
        if url.path == "/papers" and "date" in query:
            page_day = _day(query["date"])
        elif url.path.startswith("/papers/date/"):
            page_day = _day(url.path.removeprefix("/papers/date/"))
        else:
            return 404, {"Content-Type": "text/plain"}, b"Not Found"
        page = hf.html_capture(page_day) if page_day else None
        if page is None:
            return 404, {"Content-Type": "text/plain"}, b"Not Found"
        return self._maybe_not_modified(page, "text/html; charset=utf-8")

    def _maybe_not_modified(
        self, body: bytes, content_type: str
    ) -> tuple[int, dict[str, str], bytes]:
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED, "Content-Type": content_type}
        if self.headers.get("If-None-Match") == etag:
            return 304, headers, b""
        return 200, headers, body

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, truncate_after: int | None
    ) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status == 304:
                return
            if truncate_after is not None:
                self.wfile.write(body[:truncate_after])
                self.wfile.flush()
                self._hang_up()
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_chunked(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 4096):
                chunk = body[start : start + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_trickle(
        self, status: int, headers: dict[str, str], body: bytes, every: float
    ) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(body)):
                time.sleep(every)
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _page(capture: bytes | None, query: dict[str, str]) -> bytes:
    """The slice `p` of size `limit` of a day's list; the capture verbatim when it fits."""
    if capture is None:
        return b"[]"
    limit = int(query["limit"]) if query.get("limit", "").isdigit() else DEFAULT_LIMIT
    page = int(query["p"]) if query.get("p", "").isdigit() else 0
    try:
        items = json.loads(capture)
    except ValueError:
        return capture if page == 0 else b"[]"  # a scripted broken body: serve it as is
    if not isinstance(items, list):
        return capture if page == 0 else b"[]"
    if page == 0 and len(items) <= limit:
        return capture
    chunk = items[page * limit : (page + 1) * limit]
    return json.dumps(chunk, ensure_ascii=False).encode()


def _json_error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps({"error": message}).encode()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
