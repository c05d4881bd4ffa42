//! The request head an agent sends its proxy (issue 19): parsed from a
//! bounded buffer with `httparse`, into the two forms the proxy serves,
//! `CONNECT host:port` and absolute-form plain HTTP (`GET
//! http://host:port/path`); and, for the latter, the head forwarded
//! upstream (origin-form, `Host` from the URL, hop-by-hop headers dropped,
//! `Connection: close`).
//!
//! PURE: bytes in, values out; what to do with them is `proxy.rs`'s.

/// Most header lines in one request head.
const MAX_HEADERS: usize = 100;

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// `CONNECT host:port`: a tunnel.
    Connect {
        /// The target as sent (`host:port`).
        authority: String,
    },
    /// An absolute-form request for a plain `http://` URL.
    Absolute {
        /// `host[:port]` of the URL as sent (port 80 when absent).
        authority: String,
        /// The head to send upstream.
        forward: Vec<u8>,
    },
}

/// Why a head cannot be served; each has its status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// More than the buffer holds (`431`).
    TooLarge,
    /// Not HTTP, or not a request a proxy serves (`400`), with why.
    Malformed(String),
}

/// Parse the head at the start of `buf`: `Ok(None)` while incomplete,
/// else the head and its length (what follows belongs to the body or the
/// tunnel).
pub fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, Bad> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Bad::TooLarge),
        Err(e) => return Err(Bad::Malformed(format!("not an HTTP request ({e})"))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Bad::Malformed("not an HTTP request".into()));
    };
    if method == "CONNECT" {
        return Ok(Some((
            Head::Connect {
                authority: target.to_string(),
            },
            len,
        )));
    }
    let Some(rest) = strip_prefix_ignore_case(target, "http://") else {
        let why = if strip_prefix_ignore_case(target, "https://").is_some() {
            "an https:// URL goes through CONNECT, not as a plain request"
        } else if target.starts_with('/') {
            "not a proxy request (the URL has no http://host)"
        } else {
            "only CONNECT and plain http:// URLs are served"
        };
        return Err(Bad::Malformed(why.into()));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(Bad::Malformed(
            "a user name or password in the URL is not forwarded".into(),
        ));
    }
    let path = path.split('#').next().unwrap_or("");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let authority = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let host_header = authority.strip_suffix(":80").unwrap_or(&authority);
    let mut forward = Vec::with_capacity(len + 32);
    forward.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    forward.extend_from_slice(format!("Host: {host_header}\r\n").as_bytes());
    let named_by_connection: Vec<String> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let hop = matches!(
            name.as_str(),
            "host" | "connection" | "proxy-connection" | "proxy-authorization" | "keep-alive"
        ) || named_by_connection.contains(&name);
        if hop {
            continue;
        }
        forward.extend_from_slice(h.name.as_bytes());
        forward.extend_from_slice(b": ");
        forward.extend_from_slice(h.value);
        forward.extend_from_slice(b"\r\n");
    }
    forward.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some((Head::Absolute { authority, forward }, len)))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(req: &str) -> String {
        match parse(req.as_bytes()) {
            Ok(Some((Head::Absolute { authority, forward }, _))) => {
                format!("{authority}\n{}", String::from_utf8_lossy(&forward))
            }
            other => panic!("{req:?}: {other:?}"),
        }
    }

    #[test]
    fn connect_and_absolute_form_heads_are_recognized_issue_19() {
        let req = "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\nTLS";
        assert_eq!(
            parse(req.as_bytes()),
            Ok(Some((
                Head::Connect {
                    authority: "api.example.com:443".into()
                },
                req.len() - 3
            )))
        );
        assert_eq!(
            parse(b"CONNECT api.example.com:443 HTTP/1.1\r\nHo"),
            Ok(None)
        );
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(
            forward(
                "GET http://127.0.0.1:8080/a/b?c=d#frag HTTP/1.1\r\nHost: evil.example.com\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n"
            ),
            "127.0.0.1:8080\nGET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            forward("POST HTTP://Example.COM HTTP/1.0\r\nContent-Length: 3\r\n\r\n"),
            "Example.COM:80\nPOST / HTTP/1.0\r\nHost: Example.COM\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            forward("GET http://[::1]/x HTTP/1.1\r\n\r\n"),
            "[::1]:80\nGET /x HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            forward("GET http://h.example.com?q HTTP/1.1\r\n\r\n"),
            "h.example.com:80\nGET /?q HTTP/1.1\r\nHost: h.example.com\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn heads_a_proxy_does_not_serve_are_refused_with_why_issue_19() {
        let bad = |req: &str| match parse(req.as_bytes()) {
            Err(Bad::Malformed(why)) => why,
            other => panic!("{req:?}: {other:?}"),
        };
        assert_eq!(
            bad("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            "not a proxy request (the URL has no http://host)"
        );
        assert_eq!(
            bad("GET https://a.example.com/ HTTP/1.1\r\n\r\n"),
            "an https:// URL goes through CONNECT, not as a plain request"
        );
        assert_eq!(
            bad("GET ftp://a.example.com/ HTTP/1.1\r\n\r\n"),
            "only CONNECT and plain http:// URLs are served"
        );
        assert_eq!(
            bad("GET http://u:p@a.example.com/ HTTP/1.1\r\n\r\n"),
            "a user name or password in the URL is not forwarded"
        );
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert!(
            matches!(parse(tls), Err(Bad::Malformed(why)) if why.starts_with("not an HTTP request"))
        );
        assert!(
            bad("GET http://a.example.com/\nx HTTP/1.1\r\n\r\n").starts_with("not an HTTP request")
        );
        let many = format!(
            "GET http://a.example.com/ HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse(many.as_bytes()), Err(Bad::TooLarge));
    }

    proptest::proptest! {
        /// Whatever an agent sends, parsing returns; and what it accepts
        /// as a destination goes through the policy's parser without a
        /// panic either (issue 19).
        #[test]
        fn any_bytes_parse_without_panicking_issue_19(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            text in "\\PC{0,64}",
        ) {
            if let Ok(Some((Head::Connect { authority } | Head::Absolute { authority, .. }, n))) = parse(&bytes) {
                proptest::prop_assert!(n <= bytes.len());
                let _ = crate::egress::policy::parse_authority(&authority);
            }
            let req = format!("CONNECT {text} HTTP/1.1\r\n\r\n");
            let _ = parse(req.as_bytes());
            let _ = crate::egress::policy::parse_authority(&text);
            let _ = crate::egress::log::escape_host(&text);
        }
    }
}
