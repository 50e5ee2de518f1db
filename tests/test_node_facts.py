"""What a node says of itself (daemon/node_facts.py): read once at start from
the machine, sent as they are in the worker's hello."""
import os

import uds
from uds import wire
from uds.daemon import node_facts
from uds.daemon.node_facts import (
    disk_size_bytes, gather_node_facts, host_addresses, machine_memory_bytes, node_addresses,
)
from uds.daemon.runtime import listening_endpoints
from uds.wire.cluster import MasterEntry, ServiceEntry
from uds.wire.messages import MAX_NODE_ADDRESSES
from uds.wire.records import NodeFacts
from uds.worker.messages import hello_message


def test_memory_is_memtotal_in_bytes_and_0_where_unreadable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  100 kB\nMemTotal:       2048 kB\n")
    assert machine_memory_bytes(meminfo) == 2048 * 1024
    meminfo.write_text("MemTotal: lots\n")
    assert machine_memory_bytes(meminfo) == 0
    assert machine_memory_bytes(tmp_path / "none") == 0


def test_disk_is_the_size_of_the_file_system_holding_the_folder(tmp_path):
    stats = os.statvfs(tmp_path)
    assert disk_size_bytes(tmp_path) == stats.f_blocks * stats.f_frsize
    # A folder not made yet: its nearest parent's file system.
    assert disk_size_bytes(tmp_path / "not" / "yet") == disk_size_bytes(tmp_path)
    assert disk_size_bytes(None) == 0


def test_host_addresses_leave_out_loopback_and_link_local_unless_that_is_all():
    assert host_addresses(["127.0.0.1", "fe80::1", "fd00::2", "192.0.2.2", "::1", "169.254.1.1", "junk"]) == \
        ["192.0.2.2", "fd00::2"]
    assert host_addresses(["::1", "127.0.0.1", "fe80::1"]) == ["127.0.0.1", "::1"]
    assert host_addresses([]) == []


def test_node_addresses_put_its_endpoints_first_each_once_and_at_most_the_wire_allows():
    assert node_addresses(["tcp://10.0.0.1:5000", "10.0.0.1:6000"], ["10.0.0.1", "10.0.0.1", "fd00::1"]) == \
        ("tcp://10.0.0.1:5000", "10.0.0.1:6000", "10.0.0.1", "fd00::1")
    many = [f"10.0.0.{index}" for index in range(40)]
    assert node_addresses(["tcp://10.0.0.1:5000", ""], many) == \
        ("tcp://10.0.0.1:5000", *many[:MAX_NODE_ADDRESSES - 1])


def test_listening_endpoints_of_each_role():
    master = MasterEntry(address="tcp://10.0.0.1:5000", raft="10.0.0.1:6000", data=None)
    assert listening_endpoints(master) == ["tcp://10.0.0.1:5000", "10.0.0.1:6000"]
    assert listening_endpoints(ServiceEntry(address="tcp://10.0.0.2:5001", data=None)) == ["tcp://10.0.0.2:5001"]
    assert listening_endpoints(None) == []       # a worker serves nothing


def test_gathered_facts_are_this_process_and_machine(tmp_path):
    facts = gather_node_facts(tmp_path, ["tcp://127.0.0.1:5000"])
    assert facts.software == uds.__version__
    assert facts.cpus == len(os.sched_getaffinity(0))
    assert facts.machine_memory_bytes == machine_memory_bytes() > 0
    assert facts.machine_disk_bytes == disk_size_bytes(tmp_path) > 0
    assert facts.addresses[0] == "tcp://127.0.0.1:5000" and len(facts.addresses) >= 2
    # What the wire carries: every address fits, and they survive a round trip.
    sent = wire.decode(wire.encode(hello_message(bytes(16), 1, 2, 1 << 20, 1000, "host", facts=facts)))
    assert NodeFacts.from_body(sent) == facts


def test_a_machine_that_cannot_be_read_gives_zeros_not_a_fault(monkeypatch, tmp_path):
    def refuse(*args):
        raise OSError("not here")
    monkeypatch.setattr(node_facts.os, "sched_getaffinity", refuse)
    monkeypatch.setattr(node_facts.os, "cpu_count", lambda: None)
    monkeypatch.setattr(node_facts.os, "statvfs", refuse)
    monkeypatch.setattr(node_facts, "MEMINFO", tmp_path / "none")
    monkeypatch.setattr(node_facts.socket, "if_nameindex", refuse)
    monkeypatch.setattr(node_facts, "IF_INET6", tmp_path / "none")
    facts = node_facts.gather_node_facts(tmp_path, ["tcp://127.0.0.1:5000"])
    assert (facts.cpus, facts.machine_memory_bytes, facts.machine_disk_bytes, facts.addresses) == \
        (0, 0, 0, ("tcp://127.0.0.1:5000",))
