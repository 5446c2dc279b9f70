"""Where a callback may be sent: only to public addresses (no SSRF), unless the deployment
allows private ones (`WEBHOOK_ALLOW_PRIVATE=true`, for local development and tests).

A host is judged by every address it stands for: a literal address as resolvers read it
(`2130706433`, `0177.0.0.1` and `0x7f.1` are all 127.0.0.1 to `getaddrinfo`), a name by
what it resolves to, all of them public or none counts. Public is Python's `is_global`,
less multicast (which `is_global` lets through); an IPv6 address that carries an IPv4 one
(IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address it reaches.

The check runs at submit and again at each delivery, where the connection goes to the
addresses just checked (shared/webhooks/sending.py), so a name that resolves elsewhere
between the two (DNS rebinding) gains nothing.
"""

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address
# A name's addresses, as `getaddrinfo` gives them; a test swaps in its own.
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]

RESOLVE_TIMEOUT_S = 5.0
_NAT64 = IPv6Network("64:ff9b::/96")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")
# The kinds of address a callback must not reach, as `ipaddress` names them, and as said.
_NOT_PUBLIC = {
    "loopback": "a loopback",
    "link_local": "a link-local",
    "multicast": "a multicast",
    "unspecified": "an unspecified",
    "reserved": "a reserved",
    "private": "a private",
}


class CallbackRefused(OSError):
    """A callback host that must not be called; the message says why (an `OSError`, as
    aiohttp expects of a resolver)."""


# `getaddrinfo` blocks a thread for as long as the name servers take (often 10-30 s for
# one that never answers), and a timeout gives up the wait, not the thread. Callback
# hosts are strangers' names: their lookups get threads of their own, so that a run of
# them cannot fill the loop's default executor, where the model client's lookups wait.
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="auditq-callback-dns")


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses by the system's resolver, as a connection would find them."""
    lookup = partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(_LOOKUPS, lookup)
    return [ip_address(info[4][0]) for info in infos]


def _inet_aton_part(part: str) -> int:
    """One part of an IPv4 address as `inet_aton` reads it: hex, octal or decimal."""
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    return int(part, 10)


def numeric_ipv4(host: str) -> IPv4Address | None:
    """The IPv4 address `inet_aton` (and so `getaddrinfo`) reads in `host`, if any.

    `a.b.c.d`, `a.b.c` (c fills 16 bits), `a.b` (b fills 24) or `a` (32 bits), each part
    decimal, octal (leading 0) or hex (0x): `2130706433`, `0177.0.0.1`, `127.1`.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    try:
        values = [_inet_aton_part(part) for part in parts]
    except ValueError:
        return None
    *leading, last = values
    if any(value > 255 for value in leading) or last >= 1 << (8 * (5 - len(parts))):
        return None
    number = last
    for index, value in enumerate(leading):
        number += value << (8 * (3 - index))
    return IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, if it is one (an IPv6 literal is given without brackets)."""
    if ":" in host:
        try:
            return IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    return numeric_ipv4(host)


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: IPv4-mapped, 6to4 or NAT64 (64:ff9b::/96)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def why_not_public(address: IPAddress) -> str | None:
    """What makes `address` no place for a callback (`a loopback`, …); None if public."""
    if isinstance(address, IPv6Address) and (embedded := _embedded_ipv4(address)) is not None:
        return why_not_public(embedded)
    for kind, said in _NOT_PUBLIC.items():
        if getattr(address, f"is_{kind}"):
            return said
    return None if address.is_global else "a non-global"


@dataclass(frozen=True)
class CallbackPolicy:
    """Which callback hosts may be called: public ones, or any with `allow_private`."""

    allow_private: bool
    resolve: Resolve = system_resolve

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to for `host`, all of them allowed.

        Raises `CallbackRefused` for a host that is, or resolves to, an address not
        allowed, and for one that does not resolve.
        """
        literal = literal_address(host)
        if literal is not None:
            self._judge(host, [literal])
            return [literal]
        if host.replace(".", "").isdigit():
            # aiohttp takes it for an address and resolvers differ on it: neither is safe.
            raise CallbackRefused(f"{host} is not a valid address")
        if not _HOST_NAME.match(host):
            raise CallbackRefused(f"{host} is not a valid host name")
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                found = await self.resolve(host, port)
        except (OSError, TimeoutError) as exc:
            raise CallbackRefused(f"{host} does not resolve ({type(exc).__name__})") from exc
        if not found:
            raise CallbackRefused(f"{host} does not resolve")
        self._judge(host, found)
        return found

    def _judge(self, host: str, found: list[IPAddress]) -> None:
        if self.allow_private:
            return
        for address in found:
            if (why := why_not_public(address)) is not None:
                shown = host if str(address) == host else f"{host} ({address})"
                raise CallbackRefused(
                    f"{shown} is {why} address; callbacks go to public addresses only "
                    "(WEBHOOK_ALLOW_PRIVATE=true lifts this for local development)"
                )
