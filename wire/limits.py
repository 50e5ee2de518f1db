"""Size limits that every decoder and socket enforces, in one place.

A peer that exceeds one of these is misbehaving or hostile: its message is
rejected with a `WireError` (codec) or dropped and counted (transport).
See doc/wire.md for the reasoning behind each number.
"""

# One raw data frame (file block, put chunk). 4 MiB keeps a ranged read of a
# large file to a handful of round trips while bounding per-message memory.
MAX_DATA_FRAME_BYTES = 4 * 1024 * 1024

# A msgpack body. Large enough for a job of ~10,000 chunks with per-chunk
# inputs; anything bigger should be split by the sender.
MAX_BODY_BYTES = 8 * 1024 * 1024

# The share of a body that one long list of records (chunk reports, events,
# chunk results, dispatched attempts) may fill; the rest is room for the
# body's other fields, whose strings are capped far below it. Senders cut
# their lists here (wire.items_that_fit) and send the rest later.
LIST_BUDGET_BYTES = MAX_BODY_BYTES - 512 * 1024

# A job's program, args and inputs together, and one chunk's own inputs,
# packed. Every message that carries a job to a worker holds the first and
# some of the second, so both stay well inside one body.
MAX_JOB_SPEC_BYTES = 2 * 1024 * 1024
MAX_CHUNK_INPUTS_BYTES = 2 * 1024 * 1024

# Any single frame on any socket (ZMQ_MAXMSGSIZE): the largest of the above.
MAX_FRAME_BYTES = max(MAX_DATA_FRAME_BYTES, MAX_BODY_BYTES)

# Frames in one message: struct + body + at most a few raw frames.
MAX_FRAMES_PER_MESSAGE = 4

# All frames of one message together.
MAX_MESSAGE_BYTES = MAX_BODY_BYTES + MAX_DATA_FRAME_BYTES + 64 * 1024

# Elements of any msgpack array or map inside a body.
MAX_BODY_ITEMS = 200_000

# Strings inside a body (names, args, reasons, addresses).
MAX_STRING_BYTES = 64 * 1024

# The reason an error reply gives, cut to this length: enough for any
# message of ours, short enough that a reply never nears a body's limit.
ERROR_REASON_MAX_CHARS = 4000

# Queue bounds for every socket (messages, not bytes).
SEND_HIGH_WATER_MARK = 10_000
RECEIVE_HIGH_WATER_MARK = 10_000

# How long a closing socket may try to deliver what it still holds.
LINGER_MS = 200
