//! `credentials[].inject` (issue 21): a credential whose value never enters
//! the session. The session's variable holds a placeholder and the egress
//! proxy sets `header` to `format(value)` on requests to `hosts` only.
//!
//! PURE. Each of `hosts` must be written exactly as an `egress` entry (the
//! proxy decrypts only those, and a wildcard would let a name the agent
//! picks receive the key); the header must be one the proxy can set
//! without changing how the request is framed or routed.

use std::path::Path;

use super::diag::{Diagnostic, Pos, locate_key};
use super::egress::{EgressHost, EgressPolicy, dns_name, ip_literal, split_host_port};
use super::model::{Credential, Inject};
use super::rules::Problem;
use super::wire::{CredentialWire, InjectWire, ProfileFile};

/// Headers the proxy will not set: hop-by-hop ones (they describe the
/// connection, not the request), `host` (it routes the request) and the
/// framing ones (a value there would change where the request ends).
const FORBIDDEN_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Whether `name` is an HTTP header name (RFC 9110 `token`).
pub fn header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Split a `format` at its one `{}`: `Err` says what is wrong. The rest
/// must be what a header value may hold (visible ASCII, space, tab).
pub fn split_format(format: &str) -> Result<(String, String), &'static str> {
    if format.matches("{}").count() != 1 {
        return Err("it must contain `{}` exactly once, where the value goes");
    }
    if !format
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
    {
        return Err("it may hold only visible ASCII characters, spaces and tabs");
    }
    let (prefix, suffix) = format.split_once("{}").unwrap_or((format, ""));
    Ok((prefix.to_string(), suffix.to_string()))
}

/// An inject host as written: `host:port`, a name or an IP literal.
fn host(text: &str) -> Result<(EgressHost, u16), String> {
    if text.contains('*') {
        return Err("a wildcard cannot receive a credential: name the one host".into());
    }
    let (h, port) = split_host_port(text).map_err(str::to_string)?;
    let host = match ip_literal(h, false) {
        Some(ip) => EgressHost::Ip(ip),
        None => EgressHost::Name(dns_name(h).map_err(str::to_string)?),
    };
    Ok((host, port))
}

struct Sink<'a> {
    path: &'a Path,
    text: &'a str,
    out: &'a mut Vec<Diagnostic>,
    problems: usize,
}

impl Sink<'_> {
    fn at(&mut self, pos: Option<Pos>, (msg, hint): Problem) {
        let mut d = Diagnostic::new(self.path, pos, msg);
        d.hint = hint;
        self.out.push(d);
        self.problems += 1;
    }

    /// The `nth` `key =` among the credentials' inject tables.
    fn key(&self, key: &str, nth: usize) -> Option<Pos> {
        locate_key(self.text, key, nth)
    }
}

/// Validate every credential's `inject` against the profile's `egress`
/// (`egress` is `None` when the field is absent or was refused), and set
/// it on the validated `credentials` (matched by name). Problems go to `out`.
pub fn profile(
    path: &Path,
    text: &str,
    w: &ProfileFile,
    egress: Option<&EgressPolicy>,
    credentials: &mut [Credential],
    out: &mut Vec<Diagnostic>,
) {
    let mut s = Sink {
        path,
        text,
        out,
        problems: 0,
    };
    let with_inject: Vec<(usize, &CredentialWire, &InjectWire)> = w
        .credentials
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.inject.as_ref().map(|j| (i, c, j)))
        .collect();
    let mut done = Vec::new();
    for (nth, &(i, c, j)) in with_inject.iter().enumerate() {
        let before = s.problems;
        let at = s.key("inject", nth);
        if c.podman_secret.is_some() {
            s.at(at, (
                format!("credentials[{i}] `{}`: `inject` cannot use a `podman_secret`", c.name),
                Some("agentd never reads a Podman secret's value; give the value by `systemd_credential`, `file` or `source`".into()),
            ));
        }
        if w.egress.is_none() {
            s.at(
                at,
                (
                    format!("credentials[{i}] `{}`: `inject` needs `egress`", c.name),
                    Some(
                        "the egress proxy puts the value on the wire: list the hosts in `egress`"
                            .into(),
                    ),
                ),
            );
        }
        let header = j.header.to_ascii_lowercase();
        if !header_name(&j.header) {
            s.at(
                s.key("header", nth),
                (
                    format!(
                        "credentials[{i}].inject.header `{}` is not a header name",
                        j.header.escape_debug()
                    ),
                    Some(
                        "use letters, digits and `-`, as in `x-api-key` or `authorization`".into(),
                    ),
                ),
            );
        } else if FORBIDDEN_HEADERS.contains(&header.as_str()) {
            s.at(s.key("header", nth), (
                format!("credentials[{i}].inject.header `{}` cannot carry a credential", j.header),
                Some("it describes the connection, the host or the body's length; name the header the API reads the key from".into()),
            ));
        }
        let format = j.format.as_deref().unwrap_or("{}");
        let formats_before = with_inject[..nth]
            .iter()
            .filter(|(_, _, j)| j.format.is_some())
            .count();
        let split = split_format(format).map_err(|why| {
            s.at(
                s.key("format", formats_before),
                (
                    format!(
                        "credentials[{i}].inject.format `{}`: {why}",
                        format.escape_debug()
                    ),
                    Some("for example `\"Bearer {}\"`, or leave it out for the bare value".into()),
                ),
            );
        });
        let hosts_at = s.key("hosts", nth).or(at);
        if j.hosts.is_empty() {
            s.at(
                hosts_at,
                (
                    format!("credentials[{i}].inject.hosts is empty"),
                    Some("name the `egress` entries whose requests get the value".into()),
                ),
            );
        }
        let mut rules = Vec::new();
        for (k, written) in j.hosts.iter().enumerate() {
            let (h, port) = match host(written) {
                Ok(hp) => hp,
                Err(why) => {
                    s.at(
                        hosts_at,
                        (
                            format!(
                                "credentials[{i}].inject.hosts[{k}] `{}`: {why}",
                                written.escape_debug()
                            ),
                            Some("write it exactly as its `egress` entry, `host:port`".into()),
                        ),
                    );
                    continue;
                }
            };
            let Some(policy) = egress else {
                // `egress` absent (said above) or refused (said by it).
                continue;
            };
            match policy.rules.iter().find(|r| r.host == h && r.port == port) {
                Some(rule) if rules.contains(rule) => s.at(hosts_at, (
                    format!("credentials[{i}].inject.hosts[{k}] `{written}` is listed twice"),
                    Some("keep one".into()),
                )),
                Some(rule) => rules.push(rule.clone()),
                None => s.at(hosts_at, (
                    format!("credentials[{i}].inject.hosts[{k}] `{written}` is not an entry of `egress`"),
                    Some("each host that gets the value must be listed in `egress` exactly so (a wildcard entry does not count)".into()),
                )),
            }
        }
        if let (true, Ok((prefix, suffix))) = (s.problems == before, split) {
            done.push((
                c.name.clone(),
                Inject {
                    hosts: rules,
                    header,
                    prefix,
                    suffix,
                },
            ));
        }
    }
    for (name, inject) in done {
        if let Some(c) = credentials.iter_mut().find(|c| c.name == name) {
            c.inject = Some(inject);
        }
    }
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
