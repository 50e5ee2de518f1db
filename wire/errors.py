"""The codec's exceptions."""


class WireError(ValueError):
    """Bytes from a peer (or values for a peer) that break the protocol.

    `decode` raises nothing else; the reason is written for a person, e.g.
    ``"file_request: header_length 40 != 41"``.
    """


class EncodeError(WireError):
    """Our own values do not fit the message: a bug on this side, not the peer's."""
