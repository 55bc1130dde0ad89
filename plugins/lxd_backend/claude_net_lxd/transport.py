"""HTTP session for pylxd: a unix-socket adapter with a connection pool sized for our threads.

pylxd's own unix adapter keeps one connection per pool (urllib3's default ``maxsize=1``), so
under concurrency every extra request opens and then discards a connection (with a warning).
Ours keeps up to ``maxsize`` connections alive, and the session ignores proxy environment
variables (``trust_env=False``), which also saves a lookup per request. Imported only at hub
start (``requests`` is not cheap to import).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
from typing import Any
from urllib.parse import quote, unquote, urlencode

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

UNIX_SCHEME = "http+unix://"


def default_socket() -> str:
    """Where the local LXD daemon listens, as pylxd would find it."""
    if os.environ.get("LXD_DIR"):
        return os.path.join(os.environ["LXD_DIR"], "unix.socket")
    if os.path.exists("/var/snap/lxd/common/lxd/unix.socket"):
        return "/var/snap/lxd/common/lxd/unix.socket"
    return "/var/lib/lxd/unix.socket"


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, socket_path: str, **kwargs) -> None:
        super().__init__("localhost", **kwargs)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout
        sock.settimeout(timeout if isinstance(timeout, (int, float)) else None)
        try:
            sock.connect(self._socket_path)
        except OSError as exc:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(
                self, f"cannot connect to {self._socket_path}: {exc.strerror or exc}"
            ) from exc
        self.sock = sock


class _UnixPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, socket_path: str, maxsize: int) -> None:
        super().__init__("localhost", maxsize=maxsize, block=False)
        self._socket_path = socket_path

    def _new_conn(self) -> _UnixConnection:
        self.num_connections += 1
        return _UnixConnection(self._socket_path, timeout=self.timeout.connect_timeout)


class UnixAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, socket_path: str, maxsize: int) -> None:
        super().__init__(max_retries=0)
        self._pool = _UnixPool(socket_path, maxsize)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):  # requests >= 2.32
        return self._pool

    def get_connection(self, url, proxies=None):  # older requests
        return self._pool

    def request_url(self, request, proxies):
        return request.path_url

    def close(self) -> None:
        self._pool.close()
        super().close()


def make_session(endpoint: str, *, maxsize: int, cert: str = "", key: str = "",
                 server_cert: str = "") -> tuple[requests.Session, str, str]:
    """Return ``(session, pylxd_endpoint, shown)`` for a socket path, ``''`` or an https URL."""
    if endpoint.startswith(("https://", "http://")):
        from pylxd.client import get_session_for_url

        verify: bool | str = server_cert or True
        session = get_session_for_url(endpoint, verify=verify, cert=(cert, key) if cert else None)
        adapter_cls = type(session.get_adapter(endpoint))
        session.mount(endpoint, adapter_cls(pool_connections=1, pool_maxsize=maxsize))
        session.trust_env = False
        return session, endpoint.rstrip("/"), endpoint
    path = endpoint or default_socket()
    session = requests.Session()
    session.trust_env = False
    session.mount(UNIX_SCHEME, UnixAdapter(path, maxsize))
    return session, UNIX_SCHEME + quote(path, safe=""), path


class RestError(Exception):
    """An LXD API error answer (status >= 400), with LXD's own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, connect_timeout: float) -> None:
        super().__init__("localhost", timeout=connect_timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixHttpPool:
    """Keep-alive ``http.client`` connections to a unix socket, shared by threads (LIFO).

    A connection is only reused when it is idle and the server has not closed it (checked with a
    zero-timeout poll, as urllib3 does), so a request is never sent on a dead connection and
    never needs to be retried.
    """

    def __init__(self, socket_path: str, maxsize: int, connect_timeout: float) -> None:
        self.socket_path = socket_path
        self.maxsize = maxsize
        self.connect_timeout = connect_timeout
        self._idle: list[_UnixHTTPConnection] = []
        self._lock = threading.Lock()

    def _get(self) -> _UnixHTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return _UnixHTTPConnection(self.socket_path, self.connect_timeout)
            sock = conn.sock
            if sock is not None:
                try:
                    readable = select.select([sock], [], [], 0)[0]
                except (OSError, ValueError):
                    readable = True
                if not readable:
                    return conn
            conn.close()  # the server closed it (or sent garbage): take another

    def _put(self, conn: _UnixHTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str], read_timeout: float,
                limit: int | None) -> tuple[int, dict[str, str], bytes]:
        conn = self._get()
        try:
            if conn.sock is None:
                conn.connect()
            conn.sock.settimeout(read_timeout)
            conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read() if limit is None else response.read(limit)
            reusable = response.isclosed() and not response.will_close
            status, response_headers = response.status, {k.lower(): v for k, v in response.getheaders()}
        except TimeoutError as exc:
            conn.close()
            raise requests.ReadTimeout(f"no answer within {read_timeout:g}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise requests.ConnectionError(
                f"cannot talk to {self.socket_path}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
            ) from exc
        if reusable:
            self._put(conn)
        else:
            conn.close()  # a body we did not read to the end (a capped log): never reuse
        return status, response_headers, data

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class FastRest:
    """A lean LXD REST client for the exec hot path.

    pylxd's raw API (``client.api``) goes through ``requests``: about 0.8 ms of CPU per call
    here, and an exec makes six calls (POST exec, operation wait, two log reads, two log
    deletions). On a 2-CPU host that CPU is taken from LXD itself, and the hub's throughput
    under 20 concurrent execs fell to 0.6x of the direct floor. This client speaks the same
    requests to the same socket with plain ``http.client`` keep-alive connections (about 0.25 ms
    per call), with the same timeouts and error mapping. For an https endpoint it uses the
    ``requests`` session (client certificates, pinning) instead.
    """

    def __init__(self, session: requests.Session, endpoint: str, *, project: str, connect_timeout: float,
                 request_timeout: float, maxsize: int = 16) -> None:
        self._session = session
        self._base = endpoint  # "http+unix://..." or "https://host:port"
        self._pool: UnixHttpPool | None = None
        if endpoint.startswith(UNIX_SCHEME):
            self._pool = UnixHttpPool(unquote(endpoint[len(UNIX_SCHEME):]), maxsize, connect_timeout)
        self._project = project if project and project != "default" else None
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _url(self, path: str, query: dict | None) -> str:
        params = dict(query or {})
        if self._project:
            params["project"] = self._project
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urlencode(params)}"
        return path

    def _request(self, method: str, url: str, payload: bytes | None, headers: dict[str, str], read: float,
                 limit: int | None) -> tuple[int, dict[str, str], bytes]:
        if self._pool is not None:
            return self._pool.request(method, url, payload, headers, read, limit)
        response = self._session.request(method, self._base + url, data=payload, headers=headers,
                                         timeout=(self.connect_timeout, read), stream=limit is not None)
        try:
            data = response.raw.read(limit) if limit is not None else response.content
        finally:
            response.close()
        return response.status_code, {k.lower(): v for k, v in response.headers.items()}, data

    def send(self, method: str, path: str, *, query: dict | None = None, body: Any = None,
             read_timeout: float | None = None, limit: int | None = None) -> tuple[int, bytes]:
        """One request; returns (status, body) or raises RestError (>= 400) / a requests error.

        ``limit``: read at most this many bytes of the body (the rest is never read).
        """
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        read = self.request_timeout if read_timeout is None else read_timeout
        status, _headers, data = self._request(method, self._url(path, query), payload, headers, read, limit)
        if status >= 400:
            try:
                message = json.loads(data).get("error") or f"HTTP {status}"
            except ValueError:
                message = f"HTTP {status}"
            raise RestError(status, message)
        return status, data

    def head_length(self, path: str) -> int | None:
        """The Content-Length LXD announces for ``path`` (its body is never read)."""
        status, headers, _data = self._request("GET", self._url(path, None), None, {}, self.request_timeout, 0)
        length = headers.get("content-length")
        return int(length) if status < 400 and length is not None else None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``send`` and return the answer's ``metadata``."""
        _status, data = self.send(method, path, **kwargs)
        return json.loads(data).get("metadata")
