//! The SSRF guard: which addresses a delivery may connect to. A webhook destination is chosen
//! by whoever creates the endpoint, so without a guard Kapsel would POST, from inside the
//! operator's network, to the cloud metadata service (169.254.169.254), the database on
//! 10.0.0.5 or an admin port on 127.0.0.1. Every non-public range is refused unless the
//! operator lists it in `KAPSEL_ALLOW_DESTINATIONS`.
//!
//! The check applies to the exact address a connection is made to, after resolution, so that a
//! name that resolves to a public address when the endpoint is created and to a private one at
//! delivery (DNS rebinding) is still refused. IP literals are refused earlier too, when the
//! endpoint is created ([`DestinationPolicy::refuses_literal`], answered 400 E1005).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::limits;

/// An IPv4 range that is never a public destination, and what it is, for error messages.
struct BlockedV4 {
    network: Ipv4Addr,
    prefix_length: u8,
    kind: &'static str,
}

const fn v4(network: [u8; 4], prefix_length: u8, kind: &'static str) -> BlockedV4 {
    BlockedV4 { network: Ipv4Addr::new(network[0], network[1], network[2], network[3]), prefix_length, kind }
}

/// The IANA IPv4 special-purpose registry, less the ranges that are globally reachable.
const BLOCKED_V4: [BlockedV4; 15] = [
    v4([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
    v4([10, 0, 0, 0], 8, "a private address"),
    v4([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
    v4([127, 0, 0, 0], 8, "a loopback address"),
    v4([169, 254, 0, 0], 16, "a link-local address"),
    v4([172, 16, 0, 0], 12, "a private address"),
    v4([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
    v4([192, 0, 2, 0], 24, "a documentation address"),
    v4([192, 88, 99, 0], 24, "a 6to4 relay address"),
    v4([192, 168, 0, 0], 16, "a private address"),
    v4([198, 18, 0, 0], 15, "a benchmarking address"),
    v4([198, 51, 100, 0], 24, "a documentation address"),
    v4([203, 0, 113, 0], 24, "a documentation address"),
    v4([224, 0, 0, 0], 4, "a multicast address"),
    v4([240, 0, 0, 0], 4, "a reserved or broadcast address"),
];

/// An IPv6 range that is never a public destination, and what it is.
struct BlockedV6 {
    network: Ipv6Addr,
    prefix_length: u8,
    kind: &'static str,
}

const fn v6(network: [u16; 8], prefix_length: u8, kind: &'static str) -> BlockedV6 {
    let [a, b, c, d, e, f, g, h] = network;
    BlockedV6 { network: Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix_length, kind }
}

/// IPv6 ranges refused by name. Everything outside global unicast (2000::/3) is refused too
/// (see [`refusal_v6`]); these are the named cases and the special ranges inside 2000::/3.
const BLOCKED_V6: [BlockedV6; 12] = [
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "an unspecified address"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "a loopback address"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "a local-use NAT64 address"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "a documentation address"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "an IETF protocol assignment address (Teredo, ORCHID)"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "a 6to4 address"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a unique-local (private) address"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
];

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_length: u8,
}

impl Cidr {
    /// Parses `address/prefix-length`, or a bare address (a range of one). The address must be
    /// the first of its range: `10.1.2.3/8` is refused, since it is unclear whether `/8` or the
    /// address was meant.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix_length) = match text.split_once('/') {
            Some((address, prefix_length)) => (address, Some(prefix_length)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| format!("{address:?} is not an IP address"))?;
        let bits_max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_length = match prefix_length {
            None => bits_max,
            Some(digits) => digits
                .parse::<u8>()
                .ok()
                .filter(|length| *length <= bits_max && digits.bytes().all(|byte| byte.is_ascii_digit()))
                .ok_or_else(|| format!("the prefix length {digits:?} is not a number from 0 to {bits_max}"))?,
        };
        let first = mask_address(network, prefix_length);
        if first != network {
            return Err(format!("{text} has bits set past its prefix length; did you mean {first}/{prefix_length}?"));
        }
        Ok(Self { network, prefix_length })
    }

    /// Whether `address` is in the range. An IPv4 range never holds an IPv6 address, and the
    /// other way round (IPv4-mapped addresses are handled by [`DestinationPolicy`]).
    #[must_use]
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => in_range_v4(address, network, self.prefix_length),
            (IpAddr::V6(network), IpAddr::V6(address)) => in_range_v6(address, network, self.prefix_length),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.network, self.prefix_length)
    }
}

fn in_range_v4(address: Ipv4Addr, network: Ipv4Addr, prefix_length: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_length.min(32))).unwrap_or(0);
    u32::from(address) & mask == u32::from(network) & mask
}

fn in_range_v6(address: Ipv6Addr, network: Ipv6Addr, prefix_length: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix_length.min(128))).unwrap_or(0);
    u128::from(address) & mask == u128::from(network) & mask
}

fn mask_address(address: IpAddr, prefix_length: u8) -> IpAddr {
    match address {
        IpAddr::V4(address) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_length.min(32))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(address) & mask))
        }
        IpAddr::V6(address) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_length.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(address) & mask))
        }
    }
}

/// Which destination addresses deliveries may connect to: every public address, and the
/// non-public ones that fall in the operator's allow list (`KAPSEL_ALLOW_DESTINATIONS`).
/// [`DestinationPolicy::default`] allows nothing beyond the public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allowed: Vec<Cidr>,
}

impl DestinationPolicy {
    /// Parses a comma-separated list of CIDR ranges (`127.0.0.0/8,::1/128`); spaces around the
    /// entries are ignored, and an empty list allows nothing beyond the public addresses.
    ///
    /// # Errors
    ///
    /// A message naming the first bad entry, or the list's length when it has more than
    /// [`limits::ALLOW_LIST_ENTRIES_MAX`] entries.
    pub fn parse_allow_list(text: &str) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            if allowed.len() == limits::ALLOW_LIST_ENTRIES_MAX {
                return Err(format!("the allow list has more than {} entries", limits::ALLOW_LIST_ENTRIES_MAX));
            }
            let cidr = Cidr::parse(entry).map_err(|reason| format!("invalid allow-list entry {entry:?}: {reason}"))?;
            allowed.push(cidr);
        }
        Ok(Self { allowed })
    }

    /// The ranges of the allow list, in the order given.
    #[must_use]
    pub fn allowed(&self) -> &[Cidr] {
        &self.allowed
    }

    /// Whether a delivery may connect to `address`.
    #[must_use]
    pub fn permits(&self, address: IpAddr) -> bool {
        self.refusal(address).is_none()
    }

    /// Why a delivery may not connect to `address` ("a loopback address"), or `None` when it
    /// may. An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, NAT64
    /// `64:ff9b::a.b.c.d`) is judged by the IPv4 address, which is where it leads.
    #[must_use]
    pub fn refusal(&self, address: IpAddr) -> Option<&'static str> {
        if self.allowed.iter().any(|range| range.contains(address)) {
            return None;
        }
        match address {
            IpAddr::V4(address) => refusal_v4(address),
            IpAddr::V6(address) => match embedded_v4(address) {
                Some(inner) => self.refusal(IpAddr::V4(inner)),
                None => refusal_v6(address),
            },
        }
    }

    /// Whether `host` is an IP literal (bare, or IPv6 in brackets) that [`Self::permits`]
    /// refuses: such an endpoint is refused when it is created (400 E1005) rather than failing
    /// every delivery. A host name is never refused here; its addresses are checked when a
    /// delivery connects.
    #[must_use]
    pub fn refuses_literal(&self, host: &str) -> bool {
        let literal = host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host);
        literal.parse::<IpAddr>().is_ok_and(|address| !self.permits(address))
    }
}

fn refusal_v4(address: Ipv4Addr) -> Option<&'static str> {
    BLOCKED_V4.iter().find(|range| in_range_v4(address, range.network, range.prefix_length)).map(|range| range.kind)
}

fn refusal_v6(address: Ipv6Addr) -> Option<&'static str> {
    let named = BLOCKED_V6.iter().find(|range| in_range_v6(address, range.network, range.prefix_length));
    if let Some(range) = named {
        return Some(range.kind);
    }
    // Only 2000::/3 is allocated for global unicast; the rest is reserved, and a connection to
    // it can only mean something inside the operator's own network.
    let global_unicast = in_range_v6(address, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
    (!global_unicast).then_some("a reserved address (outside 2000::/3)")
}

/// The IPv4 address an IPv6 one leads to: IPv4-mapped (`::ffff:0:0/96`, which the kernel
/// connects to over IPv4) and the NAT64 well-known prefix (`64:ff9b::/96`, RFC 6052), which a
/// NAT64 gateway translates.
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
    if let Some(mapped) = address.to_ipv4_mapped() {
        return Some(mapped);
    }
    if in_range_v6(address, nat64, 96) {
        let [.., a, b, c, d] = address.octets();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused_and_public_ones_permitted() {
        // This table is the SSRF guard: each refused address is a way into the operator's
        // network, each permitted one a real destination that must keep working.
        let policy = DestinationPolicy::default();
        let refused = [
            ("10.0.0.1", "a private address"),
            ("172.16.0.1", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.168.1.1", "a private address"),
            ("127.0.0.1", "a loopback address"),
            ("127.255.0.9", "a loopback address"),
            ("169.254.169.254", "a link-local address"),
            ("0.0.0.0", "an unspecified (\"this network\") address"),
            ("0.1.2.3", "an unspecified (\"this network\") address"),
            ("224.0.0.1", "a multicast address"),
            ("239.255.255.250", "a multicast address"),
            ("255.255.255.255", "a reserved or broadcast address"),
            ("240.0.0.1", "a reserved or broadcast address"),
            ("100.64.0.1", "a shared (carrier-grade NAT) address"),
            ("192.0.2.10", "a documentation address"),
            ("198.51.100.7", "a documentation address"),
            ("203.0.113.99", "a documentation address"),
            ("198.18.0.1", "a benchmarking address"),
            ("192.0.0.8", "an IETF protocol assignment address"),
            ("::", "an unspecified address"),
            ("::1", "a loopback address"),
            ("fe80::1", "a link-local address"),
            ("fc00::1", "a unique-local (private) address"),
            ("fd12:3456::1", "a unique-local (private) address"),
            ("fec0::1", "a site-local address"),
            ("ff02::1", "a multicast address"),
            ("2001:db8::1", "a documentation address"),
            ("3fff::1", "a documentation address"),
            ("2001::1", "an IETF protocol assignment address (Teredo, ORCHID)"),
            ("2002:7f00:1::1", "a 6to4 address"),
            ("100::1", "a discard-only address"),
            ("64:ff9b:1::1", "a local-use NAT64 address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("::ffff:10.1.2.3", "a private address"),
            ("::ffff:169.254.169.254", "a link-local address"),
            ("64:ff9b::7f00:1", "a loopback address"),
            ("::127.0.0.1", "a reserved address (outside 2000::/3)"),
            ("4000::1", "a reserved address (outside 2000::/3)"),
        ];
        for (text, kind) in refused {
            assert_eq!(policy.refusal(address(text)), Some(kind), "{text}");
            assert!(!policy.permits(address(text)), "{text}");
        }
        let permitted = ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "2a00:1450::1"];
        for text in permitted.into_iter().chain(["::ffff:8.8.8.8", "64:ff9b::808:808"]) {
            assert!(policy.permits(address(text)), "{text}");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        // Operators allow a test sink on loopback or an internal network; that must not open
        // the metadata service or the rest of the private space.
        let policy = DestinationPolicy::parse_allow_list(" 127.0.0.0/8 , ::1/128,10.20.0.0/16,").unwrap();
        assert_eq!(policy.allowed().len(), 3);
        for text in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "10.20.3.4", "8.8.8.8"] {
            assert!(policy.permits(address(text)), "{text}");
        }
        for text in ["10.21.0.1", "169.254.169.254", "192.168.1.1", "::2", "fe80::1", "::ffff:10.21.0.1"] {
            assert!(!policy.permits(address(text)), "{text}");
        }
        let everything = DestinationPolicy::parse_allow_list("0.0.0.0/0,::/0").unwrap();
        assert!(everything.permits(address("169.254.169.254")) && everything.permits(address("fe80::1")));
        assert_eq!(DestinationPolicy::parse_allow_list("").unwrap(), DestinationPolicy::default());
    }

    #[test]
    fn malformed_allow_lists_name_the_bad_entry() {
        // A typo in KAPSEL_ALLOW_DESTINATIONS must stop the server at start, with the entry to
        // fix, rather than silently allow less or more than meant.
        for (text, fragment) in [
            ("127.0.0.0/33", "\"33\""),
            ("localhost", "\"localhost\""),
            ("10.1.2.3/8", "did you mean 10.0.0.0/8?"),
            ("::1/+1", "\"+1\""),
            ("127.0.0.0/8,nope/8", "\"nope/8\""),
        ] {
            let error = DestinationPolicy::parse_allow_list(text).unwrap_err();
            assert!(error.contains(fragment), "{text}: {error}");
        }
        let too_many = vec!["10.0.0.0/8"; limits::ALLOW_LIST_ENTRIES_MAX + 1].join(",");
        assert!(DestinationPolicy::parse_allow_list(&too_many).unwrap_err().contains("more than"));
    }

    #[test]
    fn literal_hosts_are_refused_at_creation() {
        // An endpoint pointing at 127.0.0.1 would fail every delivery; refusing it up front
        // gives the API client a 400 it can act on.
        let policy = DestinationPolicy::default();
        assert!(policy.refuses_literal("127.0.0.1"));
        assert!(policy.refuses_literal("[::1]"));
        assert!(policy.refuses_literal("::ffff:169.254.169.254"));
        assert!(!policy.refuses_literal("8.8.8.8"));
        assert!(!policy.refuses_literal("localhost"));
        assert!(!policy.refuses_literal("[2606:4700::1111]"));
        let allowed = DestinationPolicy::parse_allow_list("127.0.0.0/8").unwrap();
        assert!(!allowed.refuses_literal("127.0.0.1"));
    }

    proptest! {
        #[test]
        fn mapped_addresses_are_judged_like_their_ipv4(octets in any::<[u8; 4]>(), allow_loopback in any::<bool>()) {
            // The kernel connects ::ffff:a.b.c.d over IPv4 to a.b.c.d; the guard must not be
            // bypassed by writing an address in its IPv6 form.
            let list = if allow_loopback { "127.0.0.0/8" } else { "" };
            let policy = DestinationPolicy::parse_allow_list(list).unwrap();
            let inner = Ipv4Addr::from(octets);
            prop_assert_eq!(policy.permits(IpAddr::V6(inner.to_ipv6_mapped())), policy.permits(IpAddr::V4(inner)));
        }

        #[test]
        fn cidr_parsing_never_panics(text in "[0-9a-f:./]{0,48}") {
            // The allow list comes from the environment; a bad value is an error, never a crash.
            if let Ok(cidr) = Cidr::parse(&text) {
                prop_assert_eq!(Cidr::parse(&cidr.to_string()), Ok(cidr));
            }
        }
    }
}
