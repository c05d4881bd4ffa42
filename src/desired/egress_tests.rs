//! Table tests of the `egress` field (issue 19): each case is a profile
//! text and either the rules it gives or the exact diagnostics.

use core::net::IpAddr;
use std::path::Path;

use super::*;
use crate::desired::{HostView, Network, validate_profile, validate_request};

struct NoHost;

impl HostView for NoHost {
    fn exists(&self, _: &Path) -> bool {
        false
    }
    fn is_dir(&self, _: &Path) -> bool {
        false
    }
    fn read(&self, _: &Path) -> Option<Vec<u8>> {
        None
    }
}

const HEAD: &str = "base_image = \"img\"\ncommand = [\"run\"]\n";

fn validate(file: &str, text: &str) -> Result<crate::desired::Profile, Vec<String>> {
    validate_profile(Path::new(file), text.as_bytes(), &NoHost)
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

fn rules(body: &str) -> Vec<String> {
    let p = validate("p/ok.toml", &format!("{HEAD}{body}")).expect("valid profile");
    assert_eq!(p.network, Network::None, "egress runs with no network");
    p.egress
        .expect("egress set")
        .rules
        .iter()
        .map(|r| format!("{r}{}", if r.allow_private { " private" } else { "" }))
        .collect()
}

#[test]
fn entries_in_every_form_become_rules_issue_19() {
    let cases: &[(&str, &[&str])] = &[
        (
            "egress = [\"api.example.com:443\"]",
            &["api.example.com:443"],
        ),
        ("egress = [\"*.Example.COM:443\"]", &["*.example.com:443"]),
        ("egress = [\"Example.com.:80\"]", &["example.com:80"]),
        ("egress = [\"10.0.0.5:8080\"]", &["10.0.0.5:8080"]),
        ("egress = [\"[2001:db8::5]:443\"]", &["[2001:db8::5]:443"]),
        ("egress = [{ host = \"::1\", port = 80 }]", &["[::1]:80"]),
        ("egress = [{ host = \"[::1]\", port = 80 }]", &["[::1]:80"]),
        (
            "egress = [{ host = \"localhost\", port = 8080, allow_private = true }]",
            &["localhost:8080 private"],
        ),
        (
            "egress = [\"a.example.com:443\", \"a.example.com:8443\", \"localhost:1\"]",
            &["a.example.com:443", "a.example.com:8443", "localhost:1"],
        ),
        ("egress = []", &[]),
        (
            "egress = [\"xn--bcher-kva.de:443\"]",
            &["xn--bcher-kva.de:443"],
        ),
    ];
    for (body, want) in cases {
        assert_eq!(rules(body), *want, "{body}");
    }
}

#[test]
fn yaml_entries_read_as_toml_ones_issue_19() {
    let text = "base_image: img\ncommand: [run]\negress:\n  - \"api.example.com:443\"\n  - '*.example.org:443'\n  - host: localhost\n    port: 3000\n    allow_private: true\n";
    let p = validate_profile(Path::new("p/y.yaml"), text.as_bytes(), &NoHost).expect("valid");
    let rules = p.egress.expect("egress").rules;
    assert_eq!(
        rules,
        vec![
            EgressRule {
                host: EgressHost::Name("api.example.com".into()),
                port: 443,
                allow_private: false
            },
            EgressRule {
                host: EgressHost::Wildcard("example.org".into()),
                port: 443,
                allow_private: false
            },
            EgressRule {
                host: EgressHost::Name("localhost".into()),
                port: 3000,
                allow_private: true
            },
        ]
    );
}

#[test]
fn bad_entries_are_errors_at_their_position_issue_19() {
    let cases: &[(&str, &str)] = &[
        (
            "egress = [\"example.com\"]",
            "p/x.toml:3:12: egress[0] `example.com`: the port is missing (write `host:port`)",
        ),
        (
            "egress = [\"example.com:0\"]",
            "p/x.toml:3:12: egress[0] `example.com:0`: the port is not a number from 1 to 65535",
        ),
        (
            "egress = [\"example.com:65536\"]",
            "p/x.toml:3:12: egress[0] `example.com:65536`: the port is not a number from 1 to 65535",
        ),
        (
            "egress = [\"example.com:+443\"]",
            "p/x.toml:3:12: egress[0] `example.com:+443`: the port is not a number from 1 to 65535",
        ),
        (
            "egress = [\"example.com:https\"]",
            "p/x.toml:3:12: egress[0] `example.com:https`: the port is not a number from 1 to 65535",
        ),
        (
            "egress = [\"::1:443\"]",
            "p/x.toml:3:12: egress[0] `::1:443`: an IPv6 address needs brackets: `[2001:db8::1]:443`",
        ),
        (
            "egress = [\"[::1:443\"]",
            "p/x.toml:3:12: egress[0] `[::1:443`: an IPv6 address lacks its closing `]`",
        ),
        (
            "egress = [\"[nope]:443\"]",
            "p/x.toml:3:12: egress[0] `[nope]:443`: not an IPv6 address between the brackets",
        ),
        (
            "egress = [\"*.com:443\"]",
            "p/x.toml:3:12: egress[0] `*.com:443`: `*.com` is too broad: a wildcard needs at least two labels after `*.`",
        ),
        (
            "egress = [\"a.*.com:443\"]",
            "p/x.toml:3:12: egress[0] `a.*.com:443`: a wildcard is only `*.` in front of a name, as in `*.example.com`",
        ),
        (
            "egress = [\"*:443\"]",
            "p/x.toml:3:12: egress[0] `*:443`: a wildcard is only `*.` in front of a name, as in `*.example.com`",
        ),
        (
            "egress = [\"2130706433:80\"]",
            "p/x.toml:3:12: egress[0] `2130706433:80`: the host's last label does not begin with a letter (is it a mistyped IP address?)",
        ),
        (
            "egress = [\"0x7f.1:80\"]",
            "p/x.toml:3:12: egress[0] `0x7f.1:80`: the host's last label does not begin with a letter (is it a mistyped IP address?)",
        ),
        (
            "egress = [\"010.0.0.1:80\"]",
            "p/x.toml:3:12: egress[0] `010.0.0.1:80`: the host's last label does not begin with a letter (is it a mistyped IP address?)",
        ),
        (
            "egress = [\"ex_ample.com:80\"]",
            "p/x.toml:3:12: egress[0] `ex_ample.com:80`: the host has characters other than letters, digits, `-` and `.`",
        ),
        (
            "egress = [\"-a.example.com:80\"]",
            "p/x.toml:3:12: egress[0] `-a.example.com:80`: a label of the host starts or ends with `-`",
        ),
        (
            "egress = [\"a..example.com:80\"]",
            "p/x.toml:3:12: egress[0] `a..example.com:80`: a label of the host is empty or longer than 63 characters",
        ),
        (
            "egress = [\":80\"]",
            "p/x.toml:3:12: egress[0] `:80`: the host is empty",
        ),
        (
            "egress = [\"bücher.de:443\"]",
            "p/x.toml:3:12: egress[0] `bücher.de:443`: the host is not ASCII (write an international name in its xn-- form)",
        ),
        (
            "egress = [\"0.0.0.0:80\"]",
            "p/x.toml:3:12: egress[0] `0.0.0.0:80`: `0.0.0.0` is an unspecified, broadcast or multicast address, which a TCP connection cannot reach",
        ),
        (
            "egress = [\"0.1.2.3:80\"]",
            "p/x.toml:3:12: egress[0] `0.1.2.3:80`: `0.1.2.3` is an unspecified, broadcast or multicast address, which a TCP connection cannot reach",
        ),
        (
            "egress = [\"[::]:80\"]",
            "p/x.toml:3:12: egress[0] `[::]:80`: `::` is an unspecified, broadcast or multicast address, which a TCP connection cannot reach",
        ),
        (
            "egress = [\"224.0.0.1:80\"]",
            "p/x.toml:3:12: egress[0] `224.0.0.1:80`: `224.0.0.1` is an unspecified, broadcast or multicast address, which a TCP connection cannot reach",
        ),
        (
            "egress = [{ host = \"a.example.com\", port = 0 }]",
            "p/x.toml:3:21: egress[0] `a.example.com`: the port is not a number from 1 to 65535",
        ),
        (
            "egress = [\"a.example.com:443\",\n  \"A.example.com:443\"]",
            "p/x.toml:4:4: egress[1] `a.example.com:443` is listed twice",
        ),
        (
            "egress = [\"x.example.com:1\", \"x.example.com:1\"]",
            "p/x.toml:3:31: egress[1] `x.example.com:1` is listed twice",
        ),
    ];
    for (body, want) in cases {
        let errs = validate("p/x.toml", &format!("{HEAD}{body}\n")).expect_err(body);
        let msgs: Vec<&str> = errs
            .iter()
            .map(|e| e.split("; hint: ").next().unwrap_or(""))
            .collect();
        assert_eq!(msgs, [*want], "{body}");
        assert!(errs.iter().all(|e| e.contains("; hint: ")), "{errs:?}");
    }
}

#[test]
fn the_parsers_refuse_what_the_table_says_issue_19() {
    let cases: &[(&str, Option<&str>)] = &[
        ("example.com:443", Some("example.com 443")),
        ("[::1]:1", Some("[::1] 1")),
        ("127.0.0.1:65535", Some("127.0.0.1 65535")),
        ("example.com:", None),
        ("example.com:080000", None),
        ("example.com", None),
        ("[::1]", None),
        ("[::1]x:80", None),
        ("", None),
    ];
    for (text, want) in cases {
        let got = split_host_port(text).ok().map(|(h, p)| format!("{h} {p}"));
        assert_eq!(got.as_deref(), *want, "{text}");
    }
    assert_eq!(
        ip_literal("127.0.0.1", false),
        Some(IpAddr::from([127, 0, 0, 1]))
    );
    assert_eq!(ip_literal("127.1", false), None);
    assert_eq!(ip_literal("0177.0.0.1", false), None);
    assert_eq!(ip_literal("::1", false), None);
    assert!(ip_literal("::1", true).is_some());
    assert!(ip_literal("[fe80::1%eth0]", false).is_none());
    assert_eq!(
        dns_name("API.Example.com.").as_deref(),
        Ok("api.example.com")
    );
    assert!(dns_name(&format!("{}.com", "a".repeat(64))).is_err());
    assert!(dns_name(&["a"; 130].join(".")).is_err());
    assert!(dns_name("1e100.net").is_ok());
}

#[test]
fn egress_and_network_are_exclusive_issue_19() {
    let errs = validate(
        "p/x.toml",
        &format!("{HEAD}network = \"none\"\negress = [\"a.example.com:443\"]\n"),
    )
    .expect_err("exclusive");
    assert_eq!(
        errs,
        [
            "p/x.toml:4:1: `egress` and `network` are exclusive; hint: a session with `egress` has no network but the daemon's proxy; remove `network`"
        ]
    );
}

#[test]
fn a_profile_with_egress_cannot_set_the_proxy_variables_issue_19() {
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "No_Proxy",
    ] {
        let text = format!(
            "{HEAD}egress = [\"a.example.com:443\"]\n[env]\n{var} = \"http://elsewhere:3128\"\n"
        );
        let errs = validate("p/x.toml", &text).expect_err(var);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!(
                "p/x.toml:5:1: env `{var}` cannot be set in a profile with `egress`"
            )),
            "{errs:?}"
        );
        // Without egress the variable is the operator's (a corporate proxy).
        let text = format!("{HEAD}[env]\n{var} = \"http://proxy:3128\"\n");
        assert!(validate("p/x.toml", &text).is_ok(), "{var} without egress");
    }
    let text = format!(
        "{HEAD}egress = [\"a.example.com:443\"]\ncredentials = [{{ name = \"HTTPS_PROXY\", source = \"P\" }}]\n"
    );
    let errs = validate("p/x.toml", &text).expect_err("credential");
    assert!(
        errs[0].starts_with("p/x.toml:4:1: credential `HTTPS_PROXY` cannot be set"),
        "{errs:?}"
    );
}

#[test]
fn a_table_entry_with_an_unknown_field_is_a_parse_error_issue_19() {
    let text = format!(
        "{HEAD}egress = [{{ host = \"a.example.com\", port = 443, allowed_private = true }}]\n"
    );
    let errs = validate("p/x.toml", &text).expect_err("unknown field");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("p/x.toml:3:"), "{errs:?}");
    assert!(
        errs[0].contains("unknown field `allowed_private`"),
        "{errs:?}"
    );
    let text = format!("{HEAD}egress = [443]\n");
    let errs = validate("p/x.toml", &text).expect_err("a number");
    assert!(
        errs[0].contains("a \"host:port\" string or a table"),
        "{errs:?}"
    );
    let text = format!("{HEAD}egress = [{{ host = \"a.example.com\", port = 70000 }}]\n");
    assert!(validate("p/x.toml", &text).is_err());
}

#[test]
fn a_request_cannot_add_destinations_issue_19() {
    for (file, text) in [
        (
            "r/one.toml",
            "profile = \"p\"\negress = [\"evil.example.com:443\"]\n",
        ),
        (
            "r/one.yaml",
            "profile: p\negress: [\"evil.example.com:443\"]\n",
        ),
    ] {
        let errs: Vec<String> = validate_request(Path::new(file), text.as_bytes(), &NoHost)
            .expect_err(file)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!("{file}:2:")),
            "positioned: {errs:?}"
        );
        assert!(
            errs[0].contains(": a request cannot set `egress`: a session's destinations come from its profile only; hint: list the destination in the profile's `egress`"),
            "{errs:?}"
        );
    }
}

#[test]
fn too_many_entries_are_refused_issue_19() {
    let list: Vec<String> = (0..=MAX_EGRESS_ENTRIES)
        .map(|i| format!("\"h{i}.example.com:443\""))
        .collect();
    let errs = validate(
        "p/x.toml",
        &format!("{HEAD}egress = [{}]\n", list.join(", ")),
    )
    .expect_err("too many");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("egress has 257 entries; the limit is 256"),
        "{errs:?}"
    );
}
