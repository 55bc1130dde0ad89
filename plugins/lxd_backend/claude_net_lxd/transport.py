"""HTTP session for pylxd: a unix-socket adapter with a connection pool sized for our threads.

pylxd's own unix adapter keeps one connection per pool (urllib3's default ``maxsize=1``), so
under concurrency every extra request opens and then discards a connection (with a warning).
Ours keeps up to ``maxsize`` connections alive, and the session ignores proxy environment
variables (``trust_env=False``), which also saves a lookup per request. Imported only at hub
start (``requests`` is not cheap to import).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import quote

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
