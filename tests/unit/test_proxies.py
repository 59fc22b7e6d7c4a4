"""The client's address behind proxies, trusted by address range; throttle keys per client."""

from __future__ import annotations

import pytest

from lanes.errors import ConfigError
from lanes.proxies import TrustedProxies, parse_networks
from lanes.settings import Settings
from lanes.throttle import address_key

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
        ("::ffff:198.51.100.7", ["1.2.3.4"], "::ffff:198.51.100.7"),
        # A client inside the proxies' own network: the leftmost entry.
        ("127.0.0.1", ["10.9.9.9, 10.1.0.4"], "10.9.9.9"),
        ("127.0.0.1", [], "127.0.0.1"),
        # IPv4-mapped proxies are the proxies; IPv6 written in brackets is an address.
        ("::ffff:127.0.0.1", ["[2001:db8::1]"], "2001:db8::1"),
        ("127.0.0.1", ["garbage"], "garbage"),
    ],
)
def test_the_client_is_the_first_address_from_the_right_that_no_trusted_proxy_has(
    remote: str, forwarded: list[str], client: str
) -> None:
    assert CLUSTER.client(remote, forwarded) == client


def test_trusted_proxies_setting_is_checked_at_start() -> None:
    assert Settings().proxies.trusts("127.0.0.1") and not Settings().proxies.trusts("127.0.0.2")
    with pytest.raises(ConfigError):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, nonsense"})


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("198.51.100.7", "198.51.100.7"),
        ("garbage", "garbage"),
    ],
)
def test_ipv6_clients_are_throttled_by_their_64(address: str, key: str) -> None:
    assert address_key(address) == key
