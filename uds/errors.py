"""What the client library raises. Every message says what was wrong."""
from __future__ import annotations


class ClientError(Exception):
    """Base of everything the client library raises on purpose."""


class NoClusterError(ClientError):
    """No cluster file could be found."""


class InvalidJobError(ClientError, ValueError):
    """submit_job() arguments break a rule; nothing was sent."""


class RequestTimeout(ClientError, TimeoutError):
    """No master answered in time."""


class AuthenticationRefused(ClientError):
    """A daemon refused this client's key in the handshake, e.g.
    "authentication refused by master at tcp://...: this key is not admitted"."""


class RemoteError(ClientError):
    """A daemon answered with an error message."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class UnknownJobError(RemoteError):
    """The masters do not know that job id."""


class JobTimeout(ClientError, TimeoutError):
    """Job.wait() ran out of time before the job finished."""


class JobFailed(ClientError):
    """Raised by Job.result(check=True) when the job did not succeed."""
