//! The `egress` field of a profile (issue 19): the destinations a session
//! may reach through the daemon's proxy, validated into [`EgressPolicy`].
//!
//! PURE. The syntax of names and IP literals lives here so the proxy
//! (`src/egress/`) parses what an agent asks for with exactly the rules
//! that admitted the profile's entries. A name is plain ASCII
//! letters-digits-hyphens whose last label begins with a letter, so no
//! listed name is a number that a resolver would read as an address
//! (`2130706433`, `0x7f.1`).

use core::net::IpAddr;
use std::fmt;
use std::path::Path;

use super::diag::{Diagnostic, Pos, Problem, locate_key};
use super::wire::{EgressWire, ProfileFile};

/// Most entries in one profile's `egress`.
pub const MAX_EGRESS_ENTRIES: usize = 256;

/// The variables agentd sets in a session with `egress` (their lower-case
/// forms too); a profile cannot set them.
pub const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"];

/// Whether `name` is one of [`PROXY_VARS`], in any case.
pub fn is_proxy_var(name: &str) -> bool {
    PROXY_VARS.iter().any(|v| v.eq_ignore_ascii_case(name))
}

/// What an entry's host is.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum EgressHost {
    /// A DNS name: lower-case, without a trailing dot.
    Name(String),
    /// `*.suffix`: a name of one or more labels below `suffix` (lower-case).
    Wildcard(String),
    /// An IP literal: matches only itself, and may be a private address.
    Ip(IpAddr),
}

/// One destination a session may reach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressRule {
    pub host: EgressHost,
    pub port: u16,
    /// The name may resolve to a loopback, private or otherwise internal
    /// address (an IP literal always may).
    pub allow_private: bool,
}

/// A profile's `egress`: the session has no network but a proxy allowing
/// exactly these destinations (none: every attempt is refused, and recorded).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct EgressPolicy {
    pub rules: Vec<EgressRule>,
}

impl fmt::Display for EgressHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressHost::Name(n) => f.write_str(n),
            EgressHost::Wildcard(s) => write!(f, "*.{s}"),
            EgressHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            EgressHost::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A DNS name, normalized: ASCII letters, digits and hyphens in labels of
/// 1-63 characters that neither start nor end with a hyphen, at most 253
/// characters, the last label beginning with a letter; lower-cased, one
/// trailing dot dropped. `Err` says what is wrong.
pub fn dns_name(text: &str) -> Result<String, &'static str> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("the host is empty");
    }
    if !name.is_ascii() {
        return Err("the host is not ASCII (write an international name in its xn-- form)");
    }
    if name.len() > 253 {
        return Err("the host is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a label of the host is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("the host has characters other than letters, digits, `-` and `.`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host starts or ends with `-`");
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(
            "the host's last label does not begin with a letter (is it a mistyped IP address?)",
        );
    }
    Ok(name.to_ascii_lowercase())
}

/// An IP literal as written in a host position: dotted-quad IPv4 (no
/// leading zeros, no octal or hex forms) or IPv6 in brackets; `bare_v6`
/// also admits IPv6 without brackets (the table form's `host`).
pub fn ip_literal(text: &str, bare_v6: bool) -> Option<IpAddr> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse::<core::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(_) if !bare_v6 => None,
        ip => Some(ip),
    }
}

/// Split `host:port` (IPv6 in brackets). The port must be 1-65535.
pub fn split_host_port(text: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = if text.starts_with('[') {
        let close = text
            .find(']')
            .ok_or("an IPv6 address lacks its closing `]`")?;
        let rest = &text[close + 1..];
        let port = rest
            .strip_prefix(':')
            .ok_or("the port is missing (write `host:port`)")?;
        (&text[..=close], port)
    } else {
        let (h, p) = text
            .rsplit_once(':')
            .ok_or("the port is missing (write `host:port`)")?;
        if h.contains(':') {
            return Err("an IPv6 address needs brackets: `[2001:db8::1]:443`");
        }
        (h, p)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err("the port is not a number from 1 to 65535");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

/// An entry's host: `*.suffix`, an IP literal, or a name.
fn entry_host(text: &str, bare_v6: bool) -> Result<EgressHost, String> {
    if let Some(suffix) = text.strip_prefix("*.") {
        let suffix = dns_name(suffix).map_err(|e| format!("wildcard: {e}"))?;
        if !suffix.contains('.') {
            return Err(format!(
                "`*.{suffix}` is too broad: a wildcard needs at least two labels after `*.`"
            ));
        }
        return Ok(EgressHost::Wildcard(suffix));
    }
    if text.contains('*') {
        return Err("a wildcard is only `*.` in front of a name, as in `*.example.com`".into());
    }
    if let Some(ip) = ip_literal(text, bare_v6) {
        let unusable = match ip {
            IpAddr::V4(a) => a.octets()[0] == 0 || a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
        };
        if unusable {
            return Err(format!(
                "`{ip}` is an unspecified, broadcast or multicast address, which a TCP connection cannot reach"
            ));
        }
        return Ok(EgressHost::Ip(ip));
    }
    if text.starts_with('[') {
        return Err("not an IPv6 address between the brackets".into());
    }
    dns_name(text).map(EgressHost::Name).map_err(str::to_string)
}

/// One entry of `egress` as written.
fn entry(w: &EgressWire) -> Result<EgressRule, String> {
    match w {
        EgressWire::Short(text) => {
            let (host, port) = split_host_port(text).map_err(str::to_string)?;
            Ok(EgressRule {
                host: entry_host(host, false)?,
                port,
                allow_private: false,
            })
        }
        EgressWire::Table(t) => {
            if t.port == 0 {
                return Err("the port is not a number from 1 to 65535".into());
            }
            Ok(EgressRule {
                host: entry_host(&t.host, true)?,
                port: t.port,
                allow_private: t.allow_private.unwrap_or(false),
            })
        }
    }
}

/// What to search for to place a diagnostic about entry `w`.
fn needle(w: &EgressWire) -> &str {
    match w {
        EgressWire::Short(t) => t,
        EgressWire::Table(t) => &t.host,
    }
}

/// Where the `nth` occurrence of `needle` is written at or after line
/// `from` (1-based): entries are list values, which the key locator cannot
/// find.
fn locate_value(text: &str, from: Pos, needle: &str, nth: usize) -> Option<Pos> {
    if needle.is_empty() {
        return None;
    }
    let mut seen = 0;
    for (i, line) in text.lines().enumerate().skip(from.line as usize - 1) {
        for (at, _) in line.match_indices(needle) {
            if seen == nth {
                return Some(Pos {
                    line: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    col: u32::try_from(line[..at].chars().count() + 1).unwrap_or(u32::MAX),
                });
            }
            seen += 1;
        }
    }
    None
}

/// Validate a profile's `egress` and the rules it brings to the rest of
/// the file (exclusive with `network`; `env` and credentials cannot name
/// the proxy variables). Problems go to `out`; the policy is `None` when
/// the field is absent or wrong.
pub fn profile(
    path: &Path,
    text: &str,
    w: &ProfileFile,
    out: &mut Vec<Diagnostic>,
) -> Option<EgressPolicy> {
    let entries = w.egress.as_ref()?;
    let key = locate_key(text, "egress", 0);
    let mut push = |pos: Option<Pos>, (msg, hint): Problem| {
        let mut d = Diagnostic::new(path, pos, msg);
        d.hint = hint;
        out.push(d);
    };
    let mut problems = 0usize;
    if w.network.is_some() {
        problems += 1;
        push(
            key,
            (
                "`egress` and `network` are exclusive".into(),
                Some("a session with `egress` has no network but the daemon's proxy; remove `network`".into()),
            ),
        );
    }
    if entries.len() > MAX_EGRESS_ENTRIES {
        // Nothing per entry: a file of 100,000 entries costs no more.
        push(
            key,
            (
                format!(
                    "egress has {} entries; the limit is {MAX_EGRESS_ENTRIES}",
                    entries.len()
                ),
                Some("use a wildcard (`*.example.com:443`) for many hosts of one domain".into()),
            ),
        );
        return None;
    }
    let mut rules: Vec<EgressRule> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let nth = entries[..i]
            .iter()
            .filter(|p| needle(p) == needle(e))
            .count();
        let pos = key
            .and_then(|k| locate_value(text, k, needle(e), nth))
            .or(key);
        match entry(e) {
            Ok(rule)
                if rules
                    .iter()
                    .any(|r| r.host == rule.host && r.port == rule.port) =>
            {
                problems += 1;
                push(
                    pos,
                    (
                        format!("egress[{i}] `{rule}` is listed twice"),
                        Some("keep one entry per host and port".into()),
                    ),
                );
            }
            Ok(rule) => rules.push(rule),
            Err(why) => {
                problems += 1;
                push(
                    pos,
                    (
                        format!("egress[{i}] `{}`: {why}", needle(e).escape_debug()),
                        Some("write `host:port` (`api.example.com:443`, `*.example.com:443`, `10.0.0.5:8080`, `[2001:db8::5]:443`) or `{ host, port, allow_private = true }`".into()),
                    ),
                );
            }
        }
    }
    for k in w.env.keys().filter(|k| is_proxy_var(k)) {
        problems += 1;
        push(
            locate_key(text, k, 0),
            (
                format!("env `{k}` cannot be set in a profile with `egress`: agentd points it at the session's proxy"),
                Some("remove it; a command that must reach its own loopback past the proxy can clear it for itself".into()),
            ),
        );
    }
    for c in w.credentials.iter().filter(|c| is_proxy_var(&c.name)) {
        problems += 1;
        push(
            locate_key(text, "credentials", 0),
            (
                format!(
                    "credential `{}` cannot be set in a profile with `egress`: agentd points it at the session's proxy",
                    c.name
                ),
                Some("rename the credential".into()),
            ),
        );
    }
    (problems == 0).then_some(EgressPolicy { rules })
}

/// A request that tries to set `egress` gets a message saying why it
/// cannot (serde's own would only list the fields a request has).
pub fn explain_request(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    for d in &mut diags {
        if d.message.starts_with("unknown field `egress`") {
            d.message = "a request cannot set `egress`: a session's destinations come from its profile only".into();
            d.hint = Some("list the destination in the profile's `egress`".into());
        }
    }
    diags
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
