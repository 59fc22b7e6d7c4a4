"""Who the client is behind proxies: trust X-Forwarded-For entries by the proxies' addresses.

Counting hops (werkzeug's ProxyFix, `x_for=N`) needs a fixed number of proxies; on
Knative the activator joins and leaves the path as a revision scales, so a count is
wrong half of the time, and then one proxy's address stands for every client. Trusting
by address range instead (as nginx's `real_ip_recursive` and gunicorn's
`forwarded_allow_ips` do) walks the chain from the right past every proxy we know, and
takes the first address no trusted proxy could have been: whatever a client writes into
the header itself lies to the left of that and is never read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`127.0.0.1/32, 10.0.0.0/8, ::1` -> networks; ValueError for anything else."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...]

    def trusts(self, address: str) -> bool:
        parsed = parse_address(address)
        if parsed is None:
            return False
        return any(parsed.version == net.version and parsed in net for net in self.networks)

    def client(self, remote_addr: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The client's address, from the connection's peer and the X-Forwarded-For headers.

        A peer we do not trust is the client, whatever it claims. Behind trusted peers the
        client is the rightmost entry that is not a trusted proxy; when every entry is one,
        the leftmost (a client inside the proxies' own network).
        """
        if remote_addr is None or not self.trusts(remote_addr):
            return remote_addr
        chain = [entry.strip() for header in forwarded_for for entry in header.split(",") if entry.strip()]
        for entry in reversed(chain):
            if not self.trusts(entry):
                return _normal(entry)
        return _normal(chain[0]) if chain else remote_addr


def parse_address(text: str) -> Address | None:
    """An address as it is meant: an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) is the
    IPv4 one; None when `text` is no address."""
    parsed = _parse(text)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _parse(address: str) -> Address | None:
    try:
        return ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None


def _normal(entry: str) -> str:
    """An entry as a key: the canonical address, or (not an address) the text, bounded."""
    parsed = _parse(entry)
    return str(parsed) if parsed is not None else entry[:64]
