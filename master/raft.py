"""pysyncobj configuration for the masters' Raft cluster.

The password is mandatory. pysyncobj's Raft port is plain TCP and every
message on it is `pickle.loads`-ed; without a password it unpickles whatever
anyone sends, which is remote code execution for anybody who can reach the
port (and its utility commands can also add or remove cluster members).
With a password pysyncobj derives a Fernet key (via `cryptography`), so
messages are authenticated and encrypted before they are unpickled, and a
node without the cluster's password cannot talk to the others at all.
The password comes from the cluster key folder (private/raft.password).
"""

from __future__ import annotations

from typing import Any

import pysyncobj
from pysyncobj.encryptor import HAS_CRYPTO

from uds.wire.keys import KeyFolder

# Faster failover than pysyncobj's defaults (0.4 s / 1.4 s); masters share a
# LAN. pysyncobj requires raftMinTimeout > 3 * appendEntriesPeriod, so the
# heartbeat has to shrink with it (its default of 0.1 s would fail validate()).
RAFT_MIN_TIMEOUT_S = 0.25
RAFT_MAX_TIMEOUT_S = 0.6
APPEND_ENTRIES_PERIOD_S = 0.05
CONNECTION_RETRY_S = 0.5
# A leader that has heard from no majority for this long becomes a follower.
# pysyncobj's default is 30 s, during which an isolated old leader would go
# on as leader; at the minimum election timeout it has stepped down before
# the others can have elected anyone (they wait at least that long after
# their last heartbeat from it).
LEADER_FALLBACK_S = RAFT_MIN_TIMEOUT_S
# How recently a majority must have answered the leader for it to count as
# confirmed (RaftNode.confirmed_leader). A follower that answered at t votes
# for nobody before t + RAFT_MIN_TIMEOUT_S; one heartbeat period is left for
# its answer to reach the leader's Raft thread.
CONFIRMED_LEADERSHIP_S = RAFT_MIN_TIMEOUT_S - APPEND_ENTRIES_PERIOD_S

DEFAULTS: dict[str, Any] = {
    # pysyncobj: batching favours throughput, off favours per-command latency.
    "appendEntriesUseBatch": False,
    "raftMinTimeout": RAFT_MIN_TIMEOUT_S,
    "raftMaxTimeout": RAFT_MAX_TIMEOUT_S,
    "appendEntriesPeriod": APPEND_ENTRIES_PERIOD_S,
    "leaderFallbackTimeout": LEADER_FALLBACK_S,
    # `uds admin masters add|remove` changes the group at run time (see
    # master/membership.py). With this on, pysyncobj also restores the
    # membership a restarted master had committed: from the membership
    # entries of its journal, and from the member list a snapshot stores.
    "dynamicMembershipChange": True,
    # A partner that was down (or not yet started) is dialled again this
    # often. pysyncobj's 5 s default kept a two-node majority from forming
    # for 5 s whenever one member started before the other listened.
    "connectionRetryTime": CONNECTION_RETRY_S,
}

# Every option SyncObjConf knows; it silently ignores misspelled ones.
KNOWN_OPTIONS = frozenset(vars(pysyncobj.SyncObjConf()))


def syncobj_conf(keys: KeyFolder, **options: Any) -> pysyncobj.SyncObjConf:
    """A validated SyncObjConf using the key folder's Raft password.

    `options` override DEFAULTS and may set any SyncObjConf option (e.g.
    journalFile, fullDumpFile, onReady). Passing password=None or an empty
    password raises ValueError; another password may be given explicitly.
    """
    if not HAS_CRYPTO:
        raise ImportError("pysyncobj needs the 'cryptography' package for passwords")
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise ValueError(f"unknown SyncObjConf option(s): {', '.join(sorted(unknown))}")
    if "password" in options and not options["password"]:
        raise ValueError("the Raft port needs a password; refusing to run without one")
    settings = {**DEFAULTS, "password": keys.raft_password(), **options}
    conf = pysyncobj.SyncObjConf(**settings)
    try:
        conf.validate()
    except AssertionError as e:
        # pysyncobj validates with bare asserts; say which rule failed.
        raise ValueError(f"invalid SyncObjConf options {options!r}") from e
    return conf
