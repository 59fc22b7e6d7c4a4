"""Who the client is behind proxies: X-Forwarded-For believed only as far as trusted proxies wrote it.

The operator says which proxies to trust, in one of two ways:

* By address range (`TRUSTED_PROXIES`, as nginx's `real_ip_recursive` and gunicorn's
  `forwarded_allow_ips` do): walk the chain from the right past every proxy we know,
  and take the first address no trusted proxy could have been. This holds where the
  number of proxies changes, as on Knative, where the activator joins and leaves the
  path as a revision scales.
* By count (`TRUSTED_PROXY_HOPS`, as werkzeug's ProxyFix `x_for=N`): the client is the
  Nth entry from the right, for a path with a fixed number of proxies.

Either way the peer must itself be a trusted proxy (a caller that reached the process
directly is believed about nothing), and whatever a client writes into the header lies
to the left of the entry that is read. When no entry can be the client (every entry is
a trusted proxy, there are fewer entries than hops, or the entry is no address), the
client is the peer: never the leftmost entry, which the client itself chose.
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
    # 0: trust by range; N > 0: the client is the Nth X-Forwarded-For entry from the right.
    hops: int = 0

    def trusts(self, address: str | Address) -> bool:
        parsed = parse_address(address) if isinstance(address, str) else address
        if parsed is None:
            return False
        return any(parsed.version == net.version and parsed in net for net in self.networks)

    def client(self, remote_addr: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The client's address (canonical text), from the connection's peer and the
        X-Forwarded-For headers; None when the peer has no address (a Unix socket)."""
        peer = parse_address(remote_addr) if remote_addr else None
        if peer is None:
            return None
        if not self.trusts(peer):
            return str(peer)
        chain = [entry.strip() for header in forwarded_for for entry in header.split(",") if entry.strip()]
        if self.hops:
            entry = parse_address(chain[-self.hops]) if len(chain) >= self.hops else None
            return str(entry if entry is not None else peer)
        for text in reversed(chain):
            entry = parse_address(text)
            if entry is None:
                break  # no proxy writes this: the client did, so the client is out of sight
            if not self.trusts(entry):
                return str(entry)
        return str(peer)


def parse_address(text: str) -> Address | None:
    """An address as it is meant: an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) is the
    IPv4 one; None when `text` is no address."""
    try:
        parsed = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def address_key(address: str) -> str | None:
    """The key that throttles a client address: an IPv6 client by its /64, since one host
    commonly holds a whole /64 and could otherwise take a fresh address per attempt;
    None for text that is no address (it never becomes a key)."""
    parsed = parse_address(address)
    if parsed is None:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
