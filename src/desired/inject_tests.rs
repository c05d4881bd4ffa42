//! Table tests of `credentials[].inject` (issue 21): each case is a
//! profile text and either the injection it gives or the exact diagnostics.

use std::path::Path;

use crate::desired::{HostView, validate_profile};

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

fn validate(text: &str) -> Result<crate::desired::Profile, Vec<String>> {
    validate_profile(Path::new("p/p.toml"), text.as_bytes(), &NoHost)
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

fn errors(body: &str) -> Vec<String> {
    match validate(&format!("{HEAD}{body}")) {
        Ok(_) => panic!("accepted:\n{body}"),
        Err(e) => e,
    }
}

#[test]
fn an_inject_naming_egress_entries_becomes_the_credentials_injection_issue_21() {
    let p = validate(&format!(
        "{HEAD}egress = [\"api.example.com:443\", \"[2001:db8::5]:8443\", \"*.example.org:443\"]\n\
         credentials = [\n\
         {{ name = \"KEY\", systemd_credential = \"k\", inject = {{ hosts = [\"API.example.com:443\", \"[2001:db8::5]:8443\"], header = \"X-Api-Key\" }} }},\n\
         {{ name = \"TOKEN\", file = \"/etc/t\", inject = {{ hosts = [\"api.example.com:443\"], header = \"Authorization\", format = \"Bearer {{}}\" }} }},\n\
         {{ name = \"PLAIN\", source = \"PLAIN\" }},\n\
         ]\n"
    ))
    .expect("valid");
    let key = p.credentials[0].inject.as_ref().expect("inject");
    let hosts: Vec<String> = key.hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.example.com:443", "[2001:db8::5]:8443"]);
    assert_eq!(
        (
            key.header.as_str(),
            key.prefix.as_str(),
            key.suffix.as_str()
        ),
        ("x-api-key", "", "")
    );
    let token = p.credentials[1].inject.as_ref().expect("inject");
    assert_eq!(
        (token.header.as_str(), token.prefix.as_str()),
        ("authorization", "Bearer ")
    );
    assert_eq!(p.credentials[2].inject, None);
}

#[test]
fn inject_problems_are_placed_and_explained_issue_21() {
    let egress = "egress = [\"api.example.com:443\", \"*.example.org:443\"]\n";
    let cases: &[(&str, &[&str])] = &[
        (
            "credentials = [{ name = \"K\", source = \"K\", inject = { hosts = [\"api.example.com:443\"], header = \"x-api-key\" } }]\n",
            &[
                "p/p.toml:3:44: credentials[0] `K`: `inject` needs `egress`; hint: the egress proxy puts the value on the wire: list the hosts in `egress`",
            ],
        ),
        (
            "credentials = [{ name = \"K\", podman_secret = \"k\", inject = { hosts = [\"api.example.com:443\"], header = \"x-api-key\" } }]\n",
            &[
                "p/p.toml:4:51: credentials[0] `K`: `inject` cannot use a `podman_secret`; hint: agentd never reads a Podman secret's value; give the value by `systemd_credential`, `file` or `source`",
            ],
        ),
        (
            "credentials = [{ name = \"K\", source = \"K\", inject = { hosts = [\"*.example.org:443\", \"other.example.com:443\", \"api.example.com\"], header = \"x-api-key\" } }]\n",
            &[
                "p/p.toml:4:55: credentials[0].inject.hosts[0] `*.example.org:443`: a wildcard cannot receive a credential: name the one host; hint: write it exactly as its `egress` entry, `host:port`",
                "p/p.toml:4:55: credentials[0].inject.hosts[1] `other.example.com:443` is not an entry of `egress`; hint: each host that gets the value must be listed in `egress` exactly so (a wildcard entry does not count)",
                "p/p.toml:4:55: credentials[0].inject.hosts[2] `api.example.com`: the port is missing (write `host:port`); hint: write it exactly as its `egress` entry, `host:port`",
            ],
        ),
        (
            "credentials = [{ name = \"K\", source = \"K\", inject = { hosts = [\"api.example.com:443\", \"api.example.com:443\"], header = \"x-api-key\" } }]\n",
            &[
                "p/p.toml:4:55: credentials[0].inject.hosts[1] `api.example.com:443` is listed twice; hint: keep one",
            ],
        ),
        (
            "credentials = [{ name = \"K\", source = \"K\", inject = { hosts = [], header = \"x-api-key\" } }]\n",
            &[
                "p/p.toml:4:55: credentials[0].inject.hosts is empty; hint: name the `egress` entries whose requests get the value",
            ],
        ),
        (
            "credentials = [\n  { name = \"A\", source = \"A\", inject = { hosts = [\"api.example.com:443\"], header = \"Host\" } },\n  { name = \"B\", source = \"B\", inject = { hosts = [\"api.example.com:443\"], header = \"x api key\" } },\n  { name = \"C\", source = \"C\", inject = { hosts = [\"api.example.com:443\"], header = \"Transfer-Encoding\" } },\n]\n",
            &[
                "p/p.toml:5:75: credentials[0].inject.header `Host` cannot carry a credential; hint: it describes the connection, the host or the body's length; name the header the API reads the key from",
                "p/p.toml:6:75: credentials[1].inject.header `x api key` is not a header name; hint: use letters, digits and `-`, as in `x-api-key` or `authorization`",
                "p/p.toml:7:75: credentials[2].inject.header `Transfer-Encoding` cannot carry a credential; hint: it describes the connection, the host or the body's length; name the header the API reads the key from",
            ],
        ),
        (
            "credentials = [\n  { name = \"A\", source = \"A\", inject = { hosts = [\"api.example.com:443\"], header = \"a\", format = \"Bearer\" } },\n  { name = \"B\", source = \"B\", inject = { hosts = [\"api.example.com:443\"], header = \"b\" } },\n  { name = \"C\", source = \"C\", inject = { hosts = [\"api.example.com:443\"], header = \"c\", format = \"{} {}\" } },\n  { name = \"D\", source = \"D\", inject = { hosts = [\"api.example.com:443\"], header = \"d\", format = \"B\\n{}\" } },\n]\n",
            &[
                "p/p.toml:5:89: credentials[0].inject.format `Bearer`: it must contain `{}` exactly once, where the value goes; hint: for example `\"Bearer {}\"`, or leave it out for the bare value",
                "p/p.toml:7:89: credentials[2].inject.format `{} {}`: it must contain `{}` exactly once, where the value goes; hint: for example `\"Bearer {}\"`, or leave it out for the bare value",
                "p/p.toml:8:89: credentials[3].inject.format `B\\n{}`: it may hold only visible ASCII characters, spaces and tabs; hint: for example `\"Bearer {}\"`, or leave it out for the bare value",
            ],
        ),
    ];
    for (n, (body, expect)) in cases.iter().enumerate() {
        // The first case has no `egress` at all.
        let text = if n == 0 {
            (*body).to_string()
        } else {
            format!("{egress}{body}")
        };
        assert_eq!(errors(&text), *expect, "case:\n{text}");
    }
}

#[test]
fn an_inject_in_yaml_is_read_and_placed_too_issue_21() {
    let yaml = "base_image: img\ncommand: [run]\negress: [\"api.example.com:443\"]\ncredentials:\n  - name: K\n    source: K\n    inject:\n      hosts: [\"api.example.com:8443\"]\n      header: x-api-key\n";
    let got = validate_profile(Path::new("p/p.yaml"), yaml.as_bytes(), &NoHost)
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(
        got.expect_err("refused"),
        [
            "p/p.yaml:8:7: credentials[0].inject.hosts[0] `api.example.com:8443` is not an entry of `egress`; hint: each host that gets the value must be listed in `egress` exactly so (a wildcard entry does not count)"
        ]
    );
}
