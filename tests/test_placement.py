"""Placement and topology as plain functions: regions from networks, the choice of a worker by
region and headroom, refusal when every worker is full, and what each node runs."""

from __future__ import annotations

import pytest

from mediaserver.control.placement import Placement, WorkerLoad
from mediaserver.control.topology import describe, local_labels, node_of
from mediaserver.errors import MediaserverError

P = Placement(region_networks={"10.0.0.0/8": "eu", "10.9.0.0/16": "us", "2001:db8::/32": "ap"}, session_load_estimate=1000)


def w(name, node, region, *, rate=0.0, recent=0, sessions=0, available=True, capacity=10_000):
    return WorkerLoad(name, node, region, available, capacity, rate=rate, sessions=sessions, recent=recent)


def test_regions_come_from_the_longest_matching_network():
    assert P.region_of("10.1.2.3") == "eu"
    assert P.region_of("10.9.2.3") == "us"  # the /16 inside the /8
    assert P.region_of("2001:db8::5") == "ap"
    assert P.region_of("192.0.2.1") is None and P.region_of(None) is None and P.region_of("not an address") is None


def test_the_region_first_then_the_most_headroom():
    workers = [w("a", "n1", "eu", rate=5000), w("b", "n2", "eu", rate=1000), w("c", "n3", "us")]
    assert P.choose(workers, region="eu").name == "b"
    assert P.choose(workers, region="us").name == "c"
    assert P.choose(workers, region=None).name == "c"  # anywhere: the idlest
    assert P.choose(workers, region="mars").name == "c"  # a region nobody serves: anywhere


def test_recent_placements_spread_a_burst():
    workers = [w("a", "n1", "eu"), w("b", "n2", "eu")]
    chosen = []
    for _ in range(6):
        pick = P.choose(workers, region="eu")
        pick.recent += 1
        chosen.append(pick.name)
    assert chosen.count("a") == chosen.count("b") == 3


def test_full_draining_gone_and_excluded_workers_take_nothing():
    workers = [w("a", "n1", "eu", rate=9500), w("b", "n2", "eu", available=False), w("c", "n3", "us")]
    assert P.choose(workers, region="eu").name == "c"  # its region is full or unavailable: elsewhere
    with pytest.raises(MediaserverError) as e:
        P.choose(workers, exclude_nodes={"n3"})
    assert e.value.code == "no_media_capacity"
    # Sessions that never send media do not fill a worker: only what it forwards does.
    idle = [w("a", "n1", "eu", sessions=5000, recent=500)]
    assert P.choose(idle).name == "a"


def test_each_node_runs_what_its_labels_say():
    cfg = {"media_port": 7882, "media_workers": None, "session_hosts": None}
    nodes = describe([
        {"id": "A", "ip": "10.0.0.1", "alive": True, "cpus": 4, "labels": {"mediaserver-region": "eu", "mediaserver-media-host": "203.0.113.1"}},
        {"id": "B", "ip": "10.0.0.2", "alive": False, "cpus": 2, "labels": {"mediaserver-media-workers": "0", "mediaserver-media-port": "9000"}},
    ], cfg)
    a, b = nodes
    assert (a.region, [x.name for x in a.workers], a.hosts) == ("eu", ["media:10.0.0.1:0", "media:10.0.0.1:1", "media:10.0.0.1:2"],
                                                               ["host:10.0.0.1:0", "host:10.0.0.1:1"])
    assert [(x.bind_host, x.advertised_host, x.port) for x in a.workers][1] == ("10.0.0.1", "203.0.113.1", 7883)
    assert (b.region, b.workers, b.alive) == ("default", [], False)
    assert node_of("media:10.0.0.1:2") == "10.0.0.1" and node_of("host:10.0.0.2:0") == "10.0.0.2"
    labels = local_labels({"region": "eu", "media_bind_host": "127.0.0.1", "media_advertised_host": "127.0.0.1", "media_port": 0})
    assert labels["mediaserver-region"] == "eu" and labels["mediaserver-media-port"] == "0"
