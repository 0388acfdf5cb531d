"""Which IP addresses a user-given URL may reach: global unicast only, and never an IPv4 address in IPv6 dress."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 forms that carry an IPv4 address a gateway or the host's own stack would reach: the check must not
# judge the IPv6 wrapper (Python calls several of them global) when the packet ends at the embedded address.
EMBEDDED_IPV4 = tuple(ipaddress.ip_network(n) for n in (
    "::ffff:0:0/96",  # IPv4-mapped
    "::/96",  # IPv4-compatible (deprecated)
    "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
    "64:ff9b:1::/48",  # NAT64 local-use prefix (RFC 8215)
    "2002::/16",  # 6to4 (RFC 3056)
    "2001::/32",  # Teredo (RFC 4380)
))


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be fetched from, or None when it is a global unicast address."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) address"
        for network in EMBEDDED_IPV4:
            if address in network:
                return f"an IPv6 address embedding an IPv4 address ({network})"
    if address.is_reserved or not address.is_global:
        return "a private, reserved or otherwise non-global address"
    return None


def parse_address(text: str) -> IPAddress | None:
    """The address `text` spells (IPv6 zone ids kept), or None when it is a host name."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
