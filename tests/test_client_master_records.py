"""client/masters.py: the records `uds nodes` prints, from the masters' stats."""
from uds.client import masters
from uds.master import raft_node


def stats(role: str, term: int, commit: int, leader: int, confirmed: bool | None = None) -> dict:
    confirmed = role == "leader" if confirmed is None else confirmed
    return {"raft_role": raft_node.RAFT_ROLES.index(role), "raft_term": term, "raft_commit_index": commit,
            "raft_last_applied": commit - 1, "raft_leader_index": leader, "leader": int(confirmed)}


def test_the_client_reads_roles_in_the_masters_numbering():
    assert masters.RAFT_ROLES == raft_node.RAFT_ROLES


def test_lag_is_behind_the_leader_of_the_latest_term_and_silence_is_unreachable():
    addresses = ["tcp://a:1", "tcp://b:1", "tcp://c:1", "tcp://d:1"]
    answers = [stats("leader", 3, 40, 0, confirmed=False),  # an old leader that has not heard of term 4 yet
               stats("leader", 4, 45, 1),
               stats("follower", 4, 42, 1),
               None]
    records = masters._records(addresses, answers)
    assert [record.role for record in records] == ["leader", "leader", "follower", "unreachable"]
    assert [record.lag for record in records] == [5, 0, 3, None]
    assert [record.leader for record in records] == ["tcp://a:1", "tcp://b:1", "tcp://b:1", None]
    assert records[2].last_applied == 41 and not records[3].reachable
    # Only the leader a majority answered lately is confirmed; a silent one is not known.
    assert [record.confirmed_leader for record in records] == [False, True, False, None]


def test_without_a_leader_there_is_no_lag():
    records = masters._records(["tcp://a:1", "tcp://b:1"], [stats("candidate", 2, 7, -1), {"leader": 0}])
    assert [(record.role, record.lag, record.leader) for record in records] == \
        [("candidate", None, None), ("unreachable", None, None)]


def test_the_masters_table_marks_a_leader_no_majority_confirms(capsys):
    from uds.client.cli import _print_masters
    addresses = ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
    _print_masters(masters._records(addresses, [stats("leader", 4, 45, 0), stats("follower", 4, 45, 0), None]))
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines()[1:]]
    assert [row[1] for row in rows] == ["leader", "follower", "unreachable"] and "confirmed" not in table, table
    _print_masters(masters._records(addresses, [stats("leader", 4, 45, 0, confirmed=False),
                                                stats("follower", 4, 44, 0), stats("follower", 4, 44, 0)]))
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines()]
    assert [row[1] for row in rows[1:4]] == ["leader*", "follower", "follower"], table
    assert rows[1][4] == "0" and rows[2][4] == "1", table      # the lag column stays in place
    assert table.splitlines()[-1].startswith("* leads in Raft, but no majority has confirmed it"), table
