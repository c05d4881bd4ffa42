//! Table tests of the request check (issue 21): which heads pass, which
//! are refused and why, and where the value goes.

use std::sync::Arc;

use hyper::http::Request;

use super::*;
use crate::desired::Inject;
use crate::inject::SecretValue;

fn target(text: &str) -> Target {
    policy::parse_authority(text).expect("target")
}

fn cred(name: &str, header: &str, prefix: &str, value: &str) -> Arc<Injection> {
    let inject = Inject {
        hosts: Vec::new(),
        header: header.into(),
        prefix: prefix.into(),
        suffix: String::new(),
    };
    let p = Placeholder::generate().expect("random");
    Arc::new(
        Injection::new(
            name,
            p,
            &inject,
            SecretValue::new(value.as_bytes().to_vec()),
        )
        .expect("injection"),
    )
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("request").into_parts().0
}

#[test]
fn the_placeholder_in_its_own_header_becomes_the_value_issue_21() {
    let t = target("api.example.com:443");
    let key = cred("KEY", "x-api-key", "", "sk-real-1");
    let tok = cred("TOK", "authorization", "Bearer ", "tok-real-2");
    let all = [key.placeholder.clone(), tok.placeholder.clone()];
    let own = [key.clone(), tok.clone()];
    let bearer = format!("Bearer {}", tok.placeholder.as_str());
    let mut p = parts(
        "/v1/messages?x=1",
        &[
            ("Host", "API.example.com"),
            ("x-api-key", key.placeholder.as_str()),
            ("authorization", &bearer),
            ("proxy-authorization", "Basic x"),
            ("accept", "text/event-stream"),
        ],
    );
    assert_eq!(request(&mut p, &t, &own, &all), Ok(2));
    assert_eq!(p.headers["x-api-key"], "sk-real-1");
    assert!(p.headers["x-api-key"].is_sensitive());
    assert_eq!(p.headers["authorization"], "Bearer tok-real-2");
    assert_eq!(p.headers["accept"], "text/event-stream");
    assert!(!p.headers.contains_key("proxy-authorization"));
    // The bare placeholder in a formatted credential's header gets the
    // formatted value too; a request without any passes unchanged.
    let mut p = parts(
        "/",
        &[
            ("host", "api.example.com:443"),
            ("authorization", tok.placeholder.as_str()),
        ],
    );
    assert_eq!(request(&mut p, &t, &own, &all), Ok(1));
    assert_eq!(p.headers["authorization"], "Bearer tok-real-2");
    let mut p = parts("/", &[("host", "api.example.com"), ("x-api-key", "sk-own")]);
    assert_eq!(request(&mut p, &t, &own, &all), Ok(0));
    assert_eq!(p.headers["x-api-key"], "sk-own");
}

#[test]
fn a_placeholder_anywhere_else_refuses_the_request_untouched_issue_21() {
    let t = target("api.example.com:443");
    let key = cred("KEY", "x-api-key", "", "sk-real-1");
    let other = cred("OTHER", "x-api-key", "", "sk-other-host");
    let all = [key.placeholder.clone(), other.placeholder.clone()];
    let own = [key.clone()];
    let k = key.placeholder.as_str();
    let o = other.placeholder.as_str();
    let upper = k.to_ascii_uppercase();
    let in_text = format!("x {k}");
    let query = format!("/v1?key={k}");
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        // Another host's credential in the right header.
        (
            "/".into(),
            vec![("host", "api.example.com"), ("x-api-key", o)],
        ),
        // Its own placeholder in another header, inside text, in the URL,
        // as a header name, upper-cased.
        (
            "/".into(),
            vec![("host", "api.example.com"), ("x-other", k)],
        ),
        (
            "/".into(),
            vec![("host", "api.example.com"), ("x-api-key", &in_text)],
        ),
        (
            query.clone(),
            vec![("host", "api.example.com"), ("x-api-key", k)],
        ),
        ("/".into(), vec![("host", "api.example.com"), (k, "1")]),
        (
            "/".into(),
            vec![("host", "api.example.com"), ("x-api-key", &upper)],
        ),
    ];
    let mut as_method = parts("/", &[("host", "api.example.com")]);
    as_method.method = hyper::http::Method::from_bytes(k.as_bytes()).expect("a token");
    assert_eq!(
        request(&mut as_method, &t, &own, &all),
        Err(Refusal::Placeholder {
            host: "api.example.com:443".into()
        }),
        "as the method"
    );
    for (uri, headers) in cases {
        let mut p = parts(&uri, &headers);
        let before = format!("{:?}", p.headers);
        let got = request(&mut p, &t, &own, &all);
        assert_eq!(
            got,
            Err(Refusal::Placeholder {
                host: "api.example.com:443".into()
            }),
            "{uri} {headers:?}"
        );
        assert_eq!(
            format!("{:?}", p.headers),
            before,
            "a refused head is not edited"
        );
        assert!(
            !format!("{:?}", p.headers).contains("sk-real"),
            "the value never reaches a refused head"
        );
    }
    assert_eq!(
        Refusal::Placeholder {
            host: "api.example.com:443".into()
        }
        .reason(),
        "credential placeholder sent to api.example.com:443"
    );
}

#[test]
fn every_request_must_name_the_intercepted_host_issue_21() {
    let t = target("api.example.com:443");
    let key = cred("KEY", "x-api-key", "", "v");
    let all = [key.placeholder.clone()];
    let own = [key.clone()];
    let k = key.placeholder.as_str();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "/",
            &[("host", "evil.example.com"), ("x-api-key", k)],
            "Host `evil.example.com` is not api.example.com:443",
        ),
        (
            "/",
            &[("host", "api.example.com:8443")],
            "Host `api.example.com:8443` is not api.example.com:443",
        ),
        (
            "/",
            &[("x-api-key", k)],
            "no Host header (it must name api.example.com:443)",
        ),
        (
            "/",
            &[("host", "api.example.com"), ("host", "api.example.com")],
            "more than one Host header",
        ),
        (
            "http://evil.example.com/",
            &[("host", "api.example.com")],
            "an absolute URL inside an intercepted connection (send the path only)",
        ),
        (
            "/",
            &[("host", "api.example.com"), ("upgrade", "websocket")],
            "a protocol upgrade on an intercepted connection",
        ),
    ];
    for (uri, headers, why) in cases {
        let mut p = parts(uri, headers);
        let got = request(&mut p, &t, &own, &all).map_err(|r| r.reason());
        assert_eq!(got, Err((*why).to_string()), "{uri} {headers:?}");
    }
    let ip = target("[::1]:8443");
    let mut p = parts("/", &[("host", "[::1]:8443")]);
    assert_eq!(request(&mut p, &ip, &own, &all), Ok(0));
}

#[test]
fn the_tls_server_name_must_be_the_host_issue_21() {
    let name = target("api.example.com:443");
    let ip = target("127.0.0.1:8443");
    assert_eq!(server_name(Some("API.example.com."), &name), Ok(()));
    assert_eq!(server_name(None, &ip), Ok(()));
    let refused = |sni, t| server_name(sni, t).map_err(|r| r.reason());
    assert_eq!(
        refused(Some("evil.example.com"), &name),
        Err("TLS server name `evil.example.com` is not api.example.com:443".into())
    );
    assert_eq!(
        refused(None, &name),
        Err("no TLS server name (it must name api.example.com:443)".into())
    );
    assert_eq!(
        refused(Some("localhost"), &ip),
        Err("TLS server name `localhost` is not 127.0.0.1:8443".into())
    );
}

#[test]
fn a_plaintext_head_with_any_placeholder_is_refused_issue_21() {
    let key = cred("KEY", "x-api-key", "", "v");
    let all = [key.placeholder.clone()];
    let clean = b"GET http://h.example.com/ HTTP/1.1\r\nHost: h.example.com\r\n\r\n";
    assert_eq!(plaintext(clean, "h.example.com:80", &all), Ok(()));
    let head = format!(
        "GET http://h.example.com/?k={} HTTP/1.1\r\nHost: h.example.com\r\n\r\n",
        key.placeholder.as_str()
    );
    assert_eq!(
        plaintext(head.as_bytes(), "h.example.com:80", &all).map_err(|r| r.reason()),
        Err("credential placeholder sent to h.example.com:80".into())
    );
    // A placeholder of no credential of this session is just text.
    let stranger = Placeholder::generate().expect("random");
    let head = format!("GET http://h/ HTTP/1.1\r\nX: {}\r\n\r\n", stranger.as_str());
    assert_eq!(plaintext(head.as_bytes(), "h:80", &all), Ok(()));
}

#[test]
fn a_value_that_could_split_a_header_is_refused_without_showing_it_issue_21() {
    let inject = Inject {
        hosts: Vec::new(),
        header: "x-api-key".into(),
        prefix: String::new(),
        suffix: String::new(),
    };
    let p = Placeholder::generate().expect("random");
    let e = Injection::new(
        "KEY",
        p,
        &inject,
        SecretValue::new(b"sk-1\r\nX: y".to_vec()),
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("`KEY`") && !e.contains("sk-1"), "{e}");
    let shown = format!("{:?}", SecretValue::new(b"sk-1".to_vec()));
    assert!(!shown.contains("sk-1"), "{shown}");
}
