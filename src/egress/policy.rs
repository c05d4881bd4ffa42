//! The proxy's decision before any connection (issue 19): parse the
//! destination an agent asks for, find the one `egress` entry whose exact
//! (host, port) it is, and after resolution keep only the addresses that
//! entry may reach.
//!
//! PURE. What the agent sends is parsed with the rules that validated the
//! profile (`desired::dns_name`, `desired::ip_literal`), so a destination
//! the agent writes differently (case, a trailing dot, `0x7f.1`) is either
//! the same normalized name or refused as malformed.

use core::net::{IpAddr, SocketAddr};
use std::fmt;

use crate::desired::{EgressHost, EgressPolicy, EgressRule, dns_name, ip_literal, split_host_port};

/// The longest destination text kept for the record and messages; longer
/// text is cut (a valid name is at most 253 characters).
pub const MAX_HOST_TEXT: usize = 256;

/// What the agent asked for, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name (lower-case, no trailing dot), resolved on the host.
    Name(String),
    /// An IP literal, connected to as is.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
        }
    }
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// A refusal, worded for the `403` line and the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// The agent's destination text, cut to [`MAX_HOST_TEXT`] on a character
/// boundary: what the record keeps of it (escaped where printed).
pub fn host_text(text: &str) -> String {
    if text.len() <= MAX_HOST_TEXT {
        return text.to_string();
    }
    let mut end = MAX_HOST_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A host as the agent wrote it (an IPv6 literal in brackets).
pub fn parse_host(text: &str) -> Result<Host, Refused> {
    if let Some(ip) = ip_literal(text, false) {
        return Ok(Host::Ip(ip));
    }
    dns_name(text)
        .map(Host::Name)
        .map_err(|why| Refused(format!("malformed destination: {why}")))
}

/// `host:port`, the target of `CONNECT`.
pub fn parse_authority(text: &str) -> Result<Target, Refused> {
    let (host, port) =
        split_host_port(text).map_err(|why| Refused(format!("malformed destination: {why}")))?;
    Ok(Target {
        host: parse_host(host)?,
        port,
    })
}

/// Whether `rule` names exactly this host (any port).
fn host_matches(rule: &EgressHost, host: &Host) -> bool {
    match (rule, host) {
        (EgressHost::Name(r), Host::Name(h)) => r == h,
        (EgressHost::Wildcard(suffix), Host::Name(h)) => h
            .strip_suffix(suffix.as_str())
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| !head.is_empty()),
        (EgressHost::Ip(r), Host::Ip(h)) => r == h,
        _ => false,
    }
}

/// The entry allowing `target`: the first whose host matches and whose
/// port is exactly the target's.
pub fn find<'a>(policy: &'a EgressPolicy, target: &Target) -> Result<&'a EgressRule, Refused> {
    policy
        .rules
        .iter()
        .find(|r| r.port == target.port && host_matches(&r.host, &target.host))
        .ok_or_else(|| {
            Refused(format!(
                "{}:{} is not in the profile's egress list",
                target.host, target.port
            ))
        })
}

/// Of the addresses `rule` resolved to, those it may reach, in the
/// resolver's order: all of them for an IP literal or `allow_private`,
/// else only public ones that are not the host's own (`host`: the
/// addresses on its interfaces, where a public one reaches the host's
/// services as surely as loopback). `Err` when none is left, naming the
/// first refused address and why.
pub fn admit(
    rule: &EgressRule,
    addrs: &[SocketAddr],
    host: &[IpAddr],
) -> Result<Vec<SocketAddr>, Refused> {
    if matches!(rule.host, EgressHost::Ip(_)) || rule.allow_private {
        return Ok(addrs.to_vec());
    }
    let refusal = |ip: IpAddr| {
        super::addr::refusal(ip).or_else(|| host.contains(&ip).then_some("an address of this host"))
    };
    let ok: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| refusal(a.ip()).is_none())
        .collect();
    if !ok.is_empty() {
        return Ok(ok);
    }
    match addrs.first() {
        Some(a) => Err(Refused(format!(
            "resolves to {} ({}); the entry needs allow_private = true",
            a.ip(),
            refusal(a.ip()).unwrap_or("refused")
        ))),
        None => Err(Refused("resolves to no address".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[(&str, u16, bool)]) -> EgressPolicy {
        EgressPolicy {
            rules: entries
                .iter()
                .map(|(h, port, allow_private)| EgressRule {
                    host: match h.strip_prefix("*.") {
                        Some(s) => EgressHost::Wildcard((*s).into()),
                        None => match ip_literal(h, true) {
                            Some(ip) => EgressHost::Ip(ip),
                            None => EgressHost::Name((*h).into()),
                        },
                    },
                    port: *port,
                    allow_private: *allow_private,
                })
                .collect(),
        }
    }

    fn decide(p: &EgressPolicy, authority: &str) -> Result<String, String> {
        parse_authority(authority)
            .and_then(|t| find(p, &t).map(|r| r.to_string()))
            .map_err(|r| r.0)
    }

    #[test]
    fn a_destination_is_allowed_only_by_its_exact_host_and_port_issue_19() {
        let p = policy(&[
            ("api.example.com", 443, false),
            ("*.example.org", 443, false),
            ("10.0.0.5", 8080, false),
            ("2001:db8::5", 443, false),
            ("localhost", 3000, true),
        ]);
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("api.example.com:443", Ok("api.example.com:443")),
            ("API.Example.COM.:443", Ok("api.example.com:443")),
            (
                "api.example.com:80",
                Err("api.example.com:80 is not in the profile's egress list"),
            ),
            (
                "api.example.com:4430",
                Err("api.example.com:4430 is not in the profile's egress list"),
            ),
            (
                "x.api.example.com:443",
                Err("x.api.example.com:443 is not in the profile's egress list"),
            ),
            (
                "example.com:443",
                Err("example.com:443 is not in the profile's egress list"),
            ),
            ("a.example.org:443", Ok("*.example.org:443")),
            ("a.b.c.example.org:443", Ok("*.example.org:443")),
            (
                "example.org:443",
                Err("example.org:443 is not in the profile's egress list"),
            ),
            (
                "aexample.org:443",
                Err("aexample.org:443 is not in the profile's egress list"),
            ),
            (
                "a.example.org.evil.com:443",
                Err("a.example.org.evil.com:443 is not in the profile's egress list"),
            ),
            ("10.0.0.5:8080", Ok("10.0.0.5:8080")),
            (
                "10.0.0.5:8081",
                Err("10.0.0.5:8081 is not in the profile's egress list"),
            ),
            ("[2001:db8::5]:443", Ok("[2001:db8::5]:443")),
            ("[2001:0db8:0::5]:443", Ok("[2001:db8::5]:443")),
            (
                "[::ffff:10.0.0.5]:8080",
                Err("[::ffff:10.0.0.5]:8080 is not in the profile's egress list"),
            ),
            ("localhost:3000", Ok("localhost:3000")),
            (
                "127.0.0.1:3000",
                Err("127.0.0.1:3000 is not in the profile's egress list"),
            ),
            (
                "2130706433:3000",
                Err(
                    "malformed destination: the host's last label does not begin with a letter (is it a mistyped IP address?)",
                ),
            ),
            (
                "0x7f.1:3000",
                Err(
                    "malformed destination: the host's last label does not begin with a letter (is it a mistyped IP address?)",
                ),
            ),
            (
                "010.0.0.5:8080",
                Err(
                    "malformed destination: the host's last label does not begin with a letter (is it a mistyped IP address?)",
                ),
            ),
            (
                "api.example.com",
                Err("malformed destination: the port is missing (write `host:port`)"),
            ),
            (
                "api.example.com:0",
                Err("malformed destination: the port is not a number from 1 to 65535"),
            ),
            (
                "api.example.com:443 ",
                Err("malformed destination: the port is not a number from 1 to 65535"),
            ),
            (
                "::1:443",
                Err("malformed destination: an IPv6 address needs brackets: `[2001:db8::1]:443`"),
            ),
            (
                "[fe80::1%25eth0]:443",
                Err(
                    "malformed destination: the host has characters other than letters, digits, `-` and `.`",
                ),
            ),
            (
                "*.example.org:443",
                Err(
                    "malformed destination: the host has characters other than letters, digits, `-` and `.`",
                ),
            ),
            (
                "api.example.com\n:443",
                Err(
                    "malformed destination: the host has characters other than letters, digits, `-` and `.`",
                ),
            ),
            (
                "",
                Err("malformed destination: the port is missing (write `host:port`)"),
            ),
        ];
        for (authority, want) in cases {
            let want = want.map(str::to_string).map_err(str::to_string);
            assert_eq!(decide(&p, authority), want, "{authority:?}");
        }
    }

    #[test]
    fn an_empty_list_refuses_everything_issue_19() {
        let p = policy(&[]);
        assert!(decide(&p, "api.example.com:443").is_err());
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().expect(a)).collect()
    }

    #[test]
    fn a_name_reaches_only_public_addresses_unless_allowed_issue_19() {
        let p = policy(&[
            ("api.example.com", 443, false),
            ("intranet.example.com", 443, true),
            ("127.0.0.1", 8080, false),
        ]);
        let [name, private, literal] = [&p.rules[0], &p.rules[1], &p.rules[2]];
        let mixed = addrs(&[
            "127.0.0.1:443",
            "93.184.216.34:443",
            "[::1]:443",
            "[2606:2800::1]:443",
        ]);
        assert_eq!(
            admit(name, &mixed, &[]),
            Ok(addrs(&["93.184.216.34:443", "[2606:2800::1]:443"]))
        );
        assert_eq!(
            admit(name, &addrs(&["127.0.0.1:443", "[::1]:443"]), &[]),
            Err(Refused(
                "resolves to 127.0.0.1 (a loopback address); the entry needs allow_private = true"
                    .into()
            ))
        );
        assert_eq!(
            admit(name, &addrs(&["169.254.169.254:443"]), &[]),
            Err(Refused(
                "resolves to 169.254.169.254 (a cloud metadata address); the entry needs allow_private = true".into()
            ))
        );
        assert_eq!(
            admit(name, &[], &[]),
            Err(Refused("resolves to no address".into()))
        );
        assert_eq!(admit(private, &mixed, &[]), Ok(mixed.clone()));
        let lo = addrs(&["127.0.0.1:8080"]);
        assert_eq!(admit(literal, &lo, &[]), Ok(lo.clone()));
    }

    #[test]
    fn a_name_never_reaches_an_address_of_the_host_itself_issue_19() {
        let p = policy(&[
            ("api.example.com", 443, false),
            ("intranet.example.com", 443, true),
            ("93.184.216.34", 443, false),
        ]);
        let [name, private, literal] = [&p.rules[0], &p.rules[1], &p.rules[2]];
        // The host's public address, as a listed name could be pointed at.
        let own: Vec<IpAddr> = vec![
            "127.0.0.1".parse().expect("ip"),
            "93.184.216.34".parse().expect("ip"),
        ];
        let theirs = addrs(&["93.184.216.34:443"]);
        assert_eq!(
            admit(name, &theirs, &own),
            Err(Refused(
                "resolves to 93.184.216.34 (an address of this host); the entry needs allow_private = true".into()
            ))
        );
        let both = addrs(&["93.184.216.34:443", "[2606:2800::1]:443"]);
        assert_eq!(admit(name, &both, &own), Ok(addrs(&["[2606:2800::1]:443"])));
        assert_eq!(admit(name, &theirs, &[]), Ok(theirs.clone()));
        assert_eq!(admit(private, &theirs, &own), Ok(theirs.clone()));
        assert_eq!(admit(literal, &theirs, &own), Ok(theirs.clone()));
    }

    #[test]
    fn long_host_text_is_cut_on_a_character_boundary_issue_19() {
        assert_eq!(host_text("a.example.com"), "a.example.com");
        let long = "é".repeat(300);
        let cut = host_text(&long);
        assert!(cut.len() <= MAX_HOST_TEXT + 3 && cut.ends_with("..."));
    }
}
