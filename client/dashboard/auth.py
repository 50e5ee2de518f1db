"""Who may do what on the dashboard (doc/dashboard.md, "Token and bind rules").

- Reading is open on a loopback address: whoever can reach 127.0.0.1 is
  already on the machine. A request there must name a loopback host
  (`Host: 127.0.0.1:PORT`, `localhost`, `[::1]`): a web page whose own name
  is made to resolve to 127.0.0.1 (DNS rebinding) sends its own name, and
  is refused, so it cannot read the cluster through a visitor's browser.
- Any other bind address needs the cluster's admin token to start, and
  then every request but /static/ must carry it: in the X-UDS-Admin-Token
  header, or once as ?token=, which sets an HttpOnly, SameSite=Strict
  cookie for the requests after.
- Actions (cancel, release) need the token in the header, wherever the
  dashboard listens: a cookie alone never changes anything.

Tokens are compared with hmac.compare_digest. Nothing here does I/O.
"""
from __future__ import annotations

import hmac
import ipaddress
import pathlib
from dataclasses import dataclass

TOKEN_HEADER = "X-UDS-Admin-Token"
TOKEN_COOKIE = "uds_admin_token"
TOKEN_QUERY = "token"
OPEN_PREFIX = "/static/"


class TokenRequiredError(Exception):
    """A non-loopback address was asked for without an admin token."""


class TokenFileError(Exception):
    """The admin token file cannot be read or is empty."""


@dataclass(frozen=True)
class Refusal:
    status: int             # 401: no token given; 403: a wrong one; 409: none configured
    reason: str


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(host_header: str) -> str:
    """The host of a Host header: without its port, IPv6 brackets removed."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")] if "]" in host_header else ""
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port). ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def read_token_file(path: str | pathlib.Path) -> str:
    try:
        token = pathlib.Path(path).read_text().strip()
    except OSError as fault:
        raise TokenFileError(f"cannot read the admin token file {path}: {fault.strerror}") from None
    if not token:
        raise TokenFileError(f"the admin token file {path} is empty")
    return token


def _matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


@dataclass(frozen=True)
class Gate:
    """The token (None: actions are off) and whether every request needs it."""

    token: str | None
    everything: bool = False        # a non-loopback bind address

    @classmethod
    def for_listen(cls, host: str, token: str | None) -> Gate:
        """Raises TokenRequiredError for a non-loopback host without a token."""
        if not is_loopback(host) and not token:
            raise TokenRequiredError(
                f"the dashboard listens on {host}, which is not loopback: it needs the cluster's admin token "
                f"(in the client key folder, or --admin-token-file); refusing to start without one")
        return cls(token or None, everything=not is_loopback(host))

    def check_request(self, path: str, header: str | None, cookie: str | None,
                      query: str | None) -> Refusal | None:
        """Whether a request may be served at all; None: yes."""
        if not self.everything or path.startswith(OPEN_PREFIX):
            return None
        assert self.token is not None
        given = header if header is not None else query if query is not None else cookie
        if given is None:
            return Refusal(401, f"this dashboard needs the admin token: open it once with ?{TOKEN_QUERY}=TOKEN "
                                f"or send the {TOKEN_HEADER} header")
        if not _matches(given, self.token):
            return Refusal(403, "wrong admin token")
        return None

    def check_host(self, host_header: str | None) -> Refusal | None:
        """On a loopback bind, whether the request names a loopback host; None: it does."""
        if self.everything or (host_header and is_loopback(host_of(host_header))):
            return None
        return Refusal(403, f"this dashboard answers requests for 127.0.0.1, localhost or [::1] only, "
                            f"not for {(host_header or '(no Host header)')[:100]!r}")

    def sets_cookie(self, query: str | None) -> bool:
        """A right ?token= is kept in the cookie."""
        return self.everything and self.token is not None and _matches(query, self.token)

    def check_action(self, header: str | None) -> Refusal | None:
        """Whether an action (cancel, release) may go on; None: yes."""
        if self.token is None:
            return Refusal(409, "this dashboard has no admin token configured, so it cannot change anything")
        if not header:
            return Refusal(401, f"an action needs the admin token in the {TOKEN_HEADER} header")
        if not _matches(header, self.token):
            return Refusal(403, "wrong admin token")
        return None
