"""Where callbacks may go: the SSRF table.

Literal addresses in every spelling resolvers accept, names that resolve privately
(`localhost` by the system's resolver; others by a resolver the test gives), and
`WEBHOOK_ALLOW_PRIVATE` lifting it all.
"""

import asyncio
import os
import threading
from ipaddress import ip_address

import pytest

from shared.webhooks.addresses import (
    CallbackPolicy,
    CallbackRefused,
    IPAddress,
    literal_address,
    system_resolve,
    why_not_public,
)

# asyncio's default executor: `ThreadPoolExecutor`'s default size.
DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

# What a name resolves to, for the names of these tests (no DNS is asked).
NAMES: dict[str, list[str]] = {
    "hooks.example.com": [PUBLIC_V4],
    "v6.example.com": [PUBLIC_V6],
    "intranet.example.com": ["10.1.2.3"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": [PUBLIC_V4, "192.168.0.7"],  # one private address is enough
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "ula.example.com": ["fd12:3456::1"],
}


async def names(host: str, port: int) -> list[IPAddress]:
    if host not in NAMES:
        raise OSError(f"unknown host {host}")
    return [ip_address(address) for address in NAMES[host]]


STRICT = CallbackPolicy(allow_private=False, resolve=names)
OPEN = CallbackPolicy(allow_private=True, resolve=names)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        # IPv4, as written and as `inet_aton` also reads it
        ("127.0.0.1", "loopback"),
        ("2130706433", "loopback"),  # decimal
        ("0177.0.0.1", "loopback"),  # octal
        ("0x7f.0.0.1", "loopback"),  # hex
        ("0x7f000001", "loopback"),
        ("127.1", "loopback"),  # short form
        ("017700000001", "loopback"),  # one octal number
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),  # `is_global` alone would let it through
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "private"),  # documentation
        # IPv6
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),
        # IPv6 that reaches IPv4
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:7f00:1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
async def test_a_literal_address_not_public_is_refused(host: str, why: str) -> None:
    with pytest.raises(CallbackRefused, match=f"is an? {why} address"):
        await STRICT.addresses(host, 443)

    assert await OPEN.addresses(host, 443) == [literal_address(host)]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (PUBLIC_V4, PUBLIC_V4),
        ("1572395042", PUBLIC_V4),  # decimal of 93.184.216.34
        (PUBLIC_V6, PUBLIC_V6),
        ("::ffff:93.184.216.34", "::ffff:5db8:d822"),  # IPv4-mapped of a public address
        ("hooks.example.com", PUBLIC_V4),
        ("v6.example.com", PUBLIC_V6),
    ],
)
async def test_a_public_host_is_allowed_with_the_addresses_to_connect_to(
    host: str, expected: str
) -> None:
    assert await STRICT.addresses(host, 443) == [ip_address(expected)]


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("intranet.example.com", "intranet.example.com (10.1.2.3) is a private address"),
        ("metadata.example.com", "(169.254.169.254) is a link-local address"),
        ("mixed.example.com", "(192.168.0.7) is a private address"),
        ("mapped.example.com", "(::ffff:7f00:1) is a loopback address"),
        ("ula.example.com", "(fd12:3456::1) is a private address"),
        ("nowhere.example.com", "does not resolve"),
        ("256.1.1.1", "is not a valid address"),  # numeric, but no address resolvers agree on
        ("08.0.0.1", "is not a valid address"),
        ("bad host", "is not a valid host name"),
    ],
)
async def test_a_name_resolving_privately_or_not_at_all_is_refused(host: str, says: str) -> None:
    with pytest.raises(CallbackRefused, match=says.replace("(", r"\(").replace(")", r"\)")):
        await STRICT.addresses(host, 443)


async def test_localhost_is_refused_as_the_system_resolves_it() -> None:
    system = CallbackPolicy(allow_private=False)

    with pytest.raises(CallbackRefused, match=r"localhost \(.*\) is a loopback address"):
        await system.addresses("localhost", 443)
    assert all(a.is_loopback for a in await CallbackPolicy(True).addresses("localhost", 443))


async def test_callback_lookups_have_threads_of_their_own() -> None:
    # Every thread of the loop's default executor busy (as with lookups that hang): a
    # callback host still resolves, so the reverse holds too.
    loop = asyncio.get_running_loop()
    release = threading.Event()
    busy = [loop.run_in_executor(None, release.wait) for _ in range(DEFAULT_EXECUTOR_THREADS)]
    try:
        found = await asyncio.wait_for(system_resolve("localhost", 443), 5)
    finally:
        release.set()
        await asyncio.gather(*busy)

    assert all(address.is_loopback for address in found)


async def test_allowing_private_hosts_still_needs_them_to_resolve() -> None:
    assert await OPEN.addresses("intranet.example.com", 443) == [ip_address("10.1.2.3")]
    with pytest.raises(CallbackRefused, match="does not resolve"):
        await OPEN.addresses("nowhere.example.com", 443)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("4294967295", "255.255.255.255"),
        ("4294967296", None),  # beyond 32 bits
        ("1.2.3.4.5", None),
        ("example.com", None),
        ("[::1]", None),  # a URL's brackets are not part of the host
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_literal_addresses_are_read_as_inet_aton_reads_them(host: str, address: str | None) -> None:
    assert literal_address(host) == (None if address is None else ip_address(address))


def test_only_global_unicast_addresses_are_public() -> None:
    assert why_not_public(ip_address(PUBLIC_V4)) is None
    assert why_not_public(ip_address(PUBLIC_V6)) is None
    assert why_not_public(ip_address("::ffff:8.8.8.8")) is None
