"""The client's address behind proxies, trusted by address range or by hop count; throttle keys per client."""

from __future__ import annotations

import pytest

from lanes.errors import ConfigError
from lanes.proxies import TrustedProxies, address_key, parse_networks
from lanes.settings import Settings

CLUSTER = TrustedProxies(parse_networks("127.0.0.1/32, ::1, 10.0.0.0/8"))


@pytest.mark.parametrize(
    ("remote", "forwarded", "client"),
    [
        # Knative with the activator in the path: ingress, activator, queue-proxy.
        ("127.0.0.1", ["198.51.100.7, 10.1.0.4, 10.2.0.9"], "198.51.100.7"),
        # ... and without it, after the revision scaled up: one hop fewer, same client.
        ("127.0.0.1", ["198.51.100.7, 10.1.0.4"], "198.51.100.7"),
        # Whatever the client wrote itself lies left of what the ingress appended.
        ("127.0.0.1", ["6.6.6.6, 1.2.3.4, 198.51.100.7, 10.1.0.4"], "198.51.100.7"),
        # Two headers are one list.
        ("127.0.0.1", ["6.6.6.6", "198.51.100.7, 10.1.0.4"], "198.51.100.7"),
        # A peer that is no trusted proxy is the client, whatever it claims.
        ("198.51.100.7", ["1.2.3.4"], "198.51.100.7"),
        ("::ffff:198.51.100.7", ["1.2.3.4"], "198.51.100.7"),
        # Every entry a trusted proxy: the peer, never the leftmost entry (the client wrote it).
        ("127.0.0.1", ["10.9.9.9, 10.1.0.4"], "127.0.0.1"),
        ("127.0.0.1", [], "127.0.0.1"),
        # IPv4-mapped proxies are the proxies; IPv6 written in brackets is an address.
        ("::ffff:127.0.0.1", ["[2001:db8::1]"], "2001:db8::1"),
        # Text that is no address is never a key: the client is out of sight, so the peer.
        ("127.0.0.1", ["garbage"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7, unknown, 10.1.0.4"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7:4711, 10.1.0.4"], "127.0.0.1"),
        # A peer without an address (a Unix socket) gives none.
        (None, ["198.51.100.7"], None),
    ],
)
def test_the_client_is_the_first_address_from_the_right_that_no_trusted_proxy_has(
    remote: str | None, forwarded: list[str], client: str | None
) -> None:
    assert CLUSTER.client(remote, forwarded) == client


HOPS = TrustedProxies(parse_networks("127.0.0.1/32, ::1"), hops=2)


@pytest.mark.parametrize(
    ("remote", "forwarded", "client"),
    [
        # OpenFaaS: the ingress and the gateway each appended one entry; the client is the second from the right.
        ("127.0.0.1", ["198.51.100.7, 10.1.0.4"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.0.4"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7", "10.1.0.4"], "198.51.100.7"),
        # Fewer entries than hops, or no address where the client should be: the peer.
        ("127.0.0.1", ["10.1.0.4"], "127.0.0.1"),
        ("127.0.0.1", ["nonsense, 10.1.0.4"], "127.0.0.1"),
        # Counting starts only behind a trusted peer.
        ("203.0.113.5", ["198.51.100.7, 10.1.0.4"], "203.0.113.5"),
    ],
)
def test_hops_are_counted_from_the_right_as_proxyfix_does(
    remote: str, forwarded: list[str], client: str | None
) -> None:
    assert HOPS.client(remote, forwarded) == client


def test_trusted_proxies_setting_is_checked_at_start() -> None:
    assert Settings().proxies.trusts("127.0.0.1") and not Settings().proxies.trusts("127.0.0.2")
    assert not Settings().proxies.trusts("10.1.0.4"), "no private range is trusted unless the operator says so"
    assert Settings.from_env({"TRUSTED_PROXY_HOPS": "2"}).proxies.hops == 2
    with pytest.raises(ConfigError):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, nonsense"})
    with pytest.raises(ConfigError):
        Settings.from_env({"TRUSTED_PROXY_HOPS": "-1"})


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("198.51.100.7", "198.51.100.7"),
        ("garbage", None),
    ],
)
def test_ipv6_clients_are_throttled_by_their_64(address: str, key: str | None) -> None:
    assert address_key(address) == key
