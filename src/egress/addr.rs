//! Which resolved addresses the proxy refuses for a listed *name* (issue
//! 19): everything that is not a public unicast address, so DNS cannot
//! point a listed name at the host's own services, its network, or a
//! cloud's metadata service. An IP-literal entry, or one with
//! `allow_private = true`, skips this check: the operator named it.
//!
//! PURE. Ranges are the IANA special-purpose registries' (RFC 6890 and
//! successors), plus the addresses clouds serve metadata on, checked first
//! so the reason says so.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Metadata services that answer on otherwise unremarkable addresses (or
/// deserve a clearer reason than their range): AWS/GCP/Azure/OpenStack
/// (169.254.169.254), AWS ECS task metadata (169.254.170.2), Azure's
/// WireServer (168.63.129.16, a public-range address), Alibaba Cloud
/// (100.100.100.200), Oracle Cloud (192.0.0.192), AWS over IPv6
/// (fd00:ec2::254).
const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

/// Why `ip` is refused for a name without `allow_private`, or `None` for
/// a public unicast address.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => refusal_v4(a),
        IpAddr::V6(a) => refusal_v6(a),
    }
}

/// `a` lies in `net/len`.
fn in_v4(a: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(a) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(a: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(a) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn refusal_v4(a: Ipv4Addr) -> Option<&'static str> {
    if METADATA_V4.contains(&a) {
        return Some("a cloud metadata address");
    }
    const RANGES: &[([u8; 4], u32, &str)] = &[
        (
            [0, 0, 0, 0],
            8,
            "an unspecified address (0.0.0.0/8 reaches the host itself)",
        ),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        (
            [100, 64, 0, 0],
            10,
            "a shared address (100.64.0.0/10, carrier-grade NAT)",
        ),
        ([169, 254, 0, 0], 16, "a link-local address"),
        (
            [192, 0, 0, 0],
            24,
            "a reserved address (IETF protocol assignments)",
        ),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        (
            [192, 88, 99, 0],
            24,
            "a reserved address (6to4 relay anycast)",
        ),
        (
            [198, 18, 0, 0],
            15,
            "a benchmarking address (198.18.0.0/15)",
        ),
        ([224, 0, 0, 0], 4, "a multicast address"),
        (
            [240, 0, 0, 0],
            4,
            "a reserved address (240.0.0.0/4, broadcast included)",
        ),
    ];
    RANGES
        .iter()
        .find(|(net, len, _)| in_v4(a, *net, *len))
        .map(|(_, _, why)| *why)
}

fn refusal_v6(a: Ipv6Addr) -> Option<&'static str> {
    if METADATA_V6.contains(&a) {
        return Some("a cloud metadata address");
    }
    if a.is_unspecified() {
        return Some("an unspecified address");
    }
    if a.is_loopback() {
        return Some("a loopback address");
    }
    const RANGES: &[([u16; 8], u32, &str)] = &[
        (
            [0, 0, 0, 0, 0, 0xffff, 0, 0],
            96,
            "an IPv4-mapped address (::ffff:0:0/96)",
        ),
        (
            [0, 0, 0, 0, 0, 0, 0, 0],
            96,
            "an IPv4-compatible address (::/96)",
        ),
        (
            [0, 0, 0, 0, 0xffff, 0, 0, 0],
            96,
            "an IPv4-translated address (::ffff:0:0:0/96)",
        ),
        (
            [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
            96,
            "a NAT64 address (64:ff9b::/96)",
        ),
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            "a NAT64 address (64:ff9b:1::/48)",
        ),
        (
            [0x100, 0, 0, 0, 0, 0, 0, 0],
            64,
            "a discard-only address (100::/64)",
        ),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            32,
            "a Teredo address (2001::/32, embeds an IPv4 address)",
        ),
        (
            [0x2001, 2, 0, 0, 0, 0, 0, 0],
            48,
            "a benchmarking address (2001:2::/48)",
        ),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            "a documentation address",
        ),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            23,
            "a reserved address (IETF protocol assignments)",
        ),
        (
            [0x2002, 0, 0, 0, 0, 0, 0, 0],
            16,
            "a 6to4 address (2002::/16, embeds an IPv4 address)",
        ),
        (
            [0xfc00, 0, 0, 0, 0, 0, 0, 0],
            7,
            "a unique-local address (fc00::/7)",
        ),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
        (
            [0xfec0, 0, 0, 0, 0, 0, 0, 0],
            10,
            "a site-local address (deprecated)",
        ),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
    ];
    let special = RANGES
        .iter()
        .find(|(net, len, _)| in_v6(a, *net, *len))
        .map(|(_, _, why)| *why);
    // Only 2000::/3 is global unicast; the rest is unassigned or reserved.
    special.or_else(|| {
        (!in_v6(a, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3))
            .then_some("a reserved address (outside global unicast 2000::/3)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(text: &str) -> Option<&'static str> {
        refusal(text.parse().expect(text))
    }

    /// Every range at its edges, and the addresses just outside them.
    #[test]
    fn every_special_range_is_refused_and_its_neighbours_are_not_issue_19() {
        let refused: &[(&str, &str)] = &[
            ("0.0.0.0", "unspecified"),
            ("0.255.255.255", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.255", "loopback"),
            ("10.0.0.0", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.0", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("192.168.255.255", "private"),
            ("100.64.0.0", "shared"),
            ("100.127.255.255", "shared"),
            ("169.254.0.1", "link-local"),
            ("169.254.255.255", "link-local"),
            ("192.0.0.8", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("198.18.0.0", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("169.254.169.254", "metadata"),
            ("169.254.170.2", "metadata"),
            ("168.63.129.16", "metadata"),
            ("100.100.100.200", "metadata"),
            ("192.0.0.192", "metadata"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::ffff:8.8.8.8", "IPv4-mapped"),
            ("::ffff:0:0", "IPv4-mapped"),
            ("::ffff:ffff:ffff", "IPv4-mapped"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("::ffff:0:1.2.3.4", "IPv4-translated"),
            ("64:ff9b::7f00:1", "NAT64"),
            ("64:ff9b::808:808", "NAT64"),
            ("64:ff9b:1::1", "NAT64"),
            ("100::1", "discard"),
            ("2001::1", "Teredo"),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:1ff:ffff::1", "reserved"),
            ("2002:7f00:1::1", "6to4"),
            ("fc00::1", "unique-local"),
            ("fdff:ffff::1", "unique-local"),
            ("fd00:ec2::254", "metadata"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("::1:0:0:1", "reserved"),
            ("64:ff9b:2::1", "reserved"),
            ("fbff:ffff::1", "reserved"),
            ("fe00::1", "reserved"),
            ("4000::1", "reserved"),
            ("1fff:ffff::1", "reserved"),
        ];
        for (addr, word) in refused {
            let got = why(addr).unwrap_or_else(|| panic!("{addr} must be refused"));
            assert!(got.contains(word), "{addr}: {got}");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "126.255.255.255",
            "128.0.0.0",
            "192.0.1.0",
            "168.63.129.15",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:200::1",
            "2003::1",
            "2000::1",
            "3ffe::1",
        ];
        for addr in public {
            assert_eq!(why(addr), None, "{addr} is public");
        }
    }
}
