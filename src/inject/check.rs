//! What a request may carry where the proxy sees plaintext (issue 21), and
//! the substitution of a credential's value for its placeholder.
//!
//! PURE: request heads in, a decision (and the edited head) out.
//!
//! On an intercepted connection every request must name the intercepted
//! host in `Host` (no fronting: the value is for that host only), be in
//! origin form, and carry placeholders only as the whole value of their
//! own credential's header (bare, or formatted as the credential's
//! `format`). Any other placeholder of the session, in the method or the
//! URL, in another header or its name, or a credential's in a request to a host it does not
//! belong to, refuses the request. The same search runs over the head of an
//! absolute-form plain-HTTP request, where nothing is ever substituted.
//!
//! Bodies are not searched: the value is never put in a body, so a
//! placeholder there reveals nothing and takes nothing anywhere; an agent's
//! conversation routinely quotes its own environment (refusing it would
//! break the very API the key is for); a body streams, so a late match
//! could no longer refuse what was already sent; and a search is evaded by
//! any encoding. The head check is about where the value is put, which the
//! proxy fully controls, and it records a clumsy attempt.

use hyper::http::header::{HOST, HeaderValue};
use hyper::http::{Method, request::Parts};

use super::Injection;
use super::placeholder::{self, Placeholder};
use crate::egress::policy::{self, Host, Target};

/// Why a request was refused; `reason()` is the record's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A placeholder where it does not belong (an exfiltration attempt).
    Placeholder { host: String },
    /// `Host` (or SNI) names another host than the intercepted one.
    Fronting(String),
    /// Not a request the interception serves.
    Unsupported(String),
}

impl Refusal {
    pub fn reason(&self) -> String {
        match self {
            Refusal::Placeholder { host } => format!("credential placeholder sent to {host}"),
            Refusal::Fronting(why) | Refusal::Unsupported(why) => why.clone(),
        }
    }

    /// The status the client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Placeholder { .. } => 403,
            Refusal::Fronting(_) => 421,
            Refusal::Unsupported(_) => 400,
        }
    }

    /// Whether the egress record calls it `denied` (a refusal of policy)
    /// rather than a malformed request.
    pub fn is_denial(&self) -> bool {
        !matches!(self, Refusal::Unsupported(_))
    }
}

/// The placeholders of the session found in `hay` (ASCII case ignored, so
/// an upper-cased copy is caught too), first one only.
pub fn find<'a>(hay: &[u8], all: &'a [Placeholder]) -> Option<&'a Placeholder> {
    let prefix = placeholder::PREFIX.as_bytes();
    if hay.len() < placeholder::LEN {
        return None;
    }
    (0..=hay.len() - placeholder::LEN)
        .filter(|&i| hay[i..i + prefix.len()].eq_ignore_ascii_case(prefix))
        .find_map(|i| {
            let cand = &hay[i..i + placeholder::LEN];
            all.iter()
                .find(|p| p.as_str().as_bytes().eq_ignore_ascii_case(cand))
        })
}

/// The head of an absolute-form plain-HTTP request (as received) to
/// `host`: refused when it holds any of the session's placeholders (plain
/// HTTP never gets a value, so a placeholder there is only ever a leak).
pub fn plaintext(head: &[u8], host: &str, all: &[Placeholder]) -> Result<(), Refusal> {
    match find(head, all) {
        Some(_) => Err(Refusal::Placeholder { host: host.into() }),
        None => Ok(()),
    }
}

/// Whether `value` of a `Host` header names `target` (port 443 when absent).
fn host_names(value: &HeaderValue, target: &Target) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let (host, port) = match policy::parse_authority(text) {
        Ok(t) => (t.host, t.port),
        Err(_) => match policy::parse_host(text) {
            Ok(h) => (h, 443),
            Err(_) => return false,
        },
    };
    host == target.host && port == target.port
}

/// Check one request on a connection intercepted for `target` and put the
/// values of `own` (the credentials of this host) where their placeholders
/// are; `all` is every placeholder of the session. `Ok(n)`: forward the
/// edited head, `n` values were put in.
pub fn request(
    parts: &mut Parts,
    target: &Target,
    own: &[std::sync::Arc<Injection>],
    all: &[Placeholder],
) -> Result<usize, Refusal> {
    let shown = target_text(target);
    if parts.method == Method::CONNECT {
        return Err(Refusal::Unsupported(
            "CONNECT inside an intercepted connection".into(),
        ));
    }
    if parts.headers.contains_key(hyper::http::header::UPGRADE) {
        return Err(Refusal::Unsupported(
            "a protocol upgrade on an intercepted connection".into(),
        ));
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Err(Refusal::Unsupported(
            "an absolute URL inside an intercepted connection (send the path only)".into(),
        ));
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) if host_names(h, target) => {}
        (Some(h), None) => {
            return Err(Refusal::Fronting(format!(
                "Host `{}` is not {shown}",
                String::from_utf8_lossy(h.as_bytes()).escape_debug()
            )));
        }
        (None, _) => {
            return Err(Refusal::Fronting(format!(
                "no Host header (it must name {shown})"
            )));
        }
        (Some(_), Some(_)) => return Err(Refusal::Fronting("more than one Host header".into())),
    }
    let leak = || Refusal::Placeholder {
        host: shown.clone(),
    };
    if find(parts.uri.to_string().as_bytes(), all).is_some()
        || find(parts.method.as_str().as_bytes(), all).is_some()
    {
        return Err(leak());
    }
    // Decide first, edit after: a refused request is left as it came.
    let mut edits: Vec<usize> = Vec::new();
    for (i, (name, value)) in parts.headers.iter().enumerate() {
        if find(name.as_str().as_bytes(), all).is_some() {
            return Err(leak());
        }
        if find(value.as_bytes(), all).is_none() {
            continue;
        }
        let whole = value.as_bytes();
        let mine = own.iter().any(|c| {
            c.header == name.as_str()
                && (whole == c.placeholder.as_str().as_bytes()
                    || whole == c.formatted_placeholder().as_bytes())
        });
        if !mine {
            return Err(leak());
        }
        edits.push(i);
    }
    let count = edits.len();
    for (i, (name, value)) in parts.headers.iter_mut().enumerate() {
        if !edits.contains(&i) {
            continue;
        }
        let Some(c) = own.iter().find(|c| {
            c.header == name.as_str()
                && (value.as_bytes() == c.placeholder.as_str().as_bytes()
                    || value.as_bytes() == c.formatted_placeholder().as_bytes())
        }) else {
            continue;
        };
        let mut v = HeaderValue::from_bytes(&c.header_value()).map_err(|_| {
            Refusal::Unsupported(format!("the value of {} is not a header value", c.name))
        })?;
        v.set_sensitive(true);
        *value = v;
    }
    // Headers that address the proxy, not the host.
    parts.headers.remove("proxy-authorization");
    parts.headers.remove("proxy-connection");
    Ok(count)
}

/// `host:port` of the intercepted destination, as the record shows it.
pub fn target_text(t: &Target) -> String {
    format!("{}:{}", t.host, t.port)
}

/// The host a TLS client named (SNI) is the intercepted one: a name must
/// be sent and equal; an IP literal cannot be sent as SNI, so none is.
pub fn server_name(sni: Option<&str>, target: &Target) -> Result<(), Refusal> {
    let ok = match (&target.host, sni) {
        (Host::Name(n), Some(s)) => s.strip_suffix('.').unwrap_or(s).eq_ignore_ascii_case(n),
        (Host::Ip(_), None) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(Refusal::Fronting(match sni {
        Some(s) => format!(
            "TLS server name `{}` is not {}",
            s.escape_debug(),
            target_text(target)
        ),
        None => format!("no TLS server name (it must name {})", target_text(target)),
    }))
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
