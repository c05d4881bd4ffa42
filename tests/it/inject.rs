//! Injected credentials (issue 21), end to end: real daemon, real Podman,
//! TLS git servers on the host's 127.0.0.1 whose CA reaches the daemon by
//! `--egress-ca-file`. The session holds placeholders; the proxy puts the
//! real value on requests to the credential's own host only, refuses and
//! records a placeholder sent anywhere else, and the value is found in
//! nothing the agent can read nor in anything agentd writes. Runs rootful,
//! and rootless in scripts/test's second pass.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::egress::{HttpServer, SH_LIB, egress_lines};
use crate::egress_more::{shared_dir, wait_file};
use crate::git_server::{GitServer, bare_repo};
use crate::util::{World, leak_haystacks, require_podman, sample_ps, test_image, toml_string};

/// A CA and a leaf for 127.0.0.1 it signed (a self-signed leaf is not a
/// trust anchor TLS libraries accept): `(ca.pem, cert.pem, key.pem)`.
pub fn ca_and_leaf(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=agentd-it-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "leaf.csr"]);
    run(&csr);
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// Standard base64 (what HTTP basic auth carries).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn reversed(s: &str) -> String {
    s.chars().rev().collect()
}

#[test]
fn an_injected_key_reaches_its_host_only_and_never_the_session_issue_21() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let (ca, cert, key) = ca_and_leaf(&w.path().join("tls"));
    let srv = w.path().join("srv");
    bare_repo(&srv.join("r.git"), "served behind an injected key");
    // Two forges, each demanding its own token: the value of credential A
    // is basic auth for forge A, B's for forge B.
    let tok_a = format!("tok-a-{}", agentd::new_session_id());
    let tok_b = format!("tok-b-{}", agentd::new_session_id());
    let forge_a = GitServer::start(
        &w.path().join("ga"),
        &srv,
        Some((&cert, &key)),
        Some(&tok_a),
    );
    let forge_b = GitServer::start(
        &w.path().join("gb"),
        &srv,
        Some((&cert, &key)),
        Some(&tok_b),
    );
    let plain = HttpServer::start("nobody should see a placeholder\n");
    let value_a = base64(format!("x:{tok_a}").as_bytes());
    let value_b = base64(format!("x:{tok_b}").as_bytes());
    let file_b = w.path().join("b.key");
    std::fs::write(&file_b, format!("{value_b}\n")).expect("write");
    std::fs::set_permissions(&file_b, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let (a, b) = (forge_a.port, forge_b.port);
    let script = format!(
        r#"{SH_LIB}
set -u
until [ -e /gate/go ]; do sleep 0.05; done
export NO_PROXY= no_proxy=
case "$A_KEY" in agentd-ph-*) echo PH_A;; esac
case "$B_KEY" in agentd-ph-*) echo PH_B;; esac
[ "$A_KEY" != "$B_KEY" ] && echo PH_DISTINCT
echo "CA: $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $GIT_SSL_CAINFO $NODE_EXTRA_CA_CERTS"
echo "KEYS_IN_CA: $(cat /agentd/ca/* | grep -c 'PRIVATE KEY')"
call() {{ git -c http.extraHeader="Authorization: Basic $1" ls-remote "https://127.0.0.1:$2/r.git" 2>&1; }}
call "$A_KEY" {a} | grep -q refs/heads/main && echo A_OK
call "$B_KEY" {b} | grep -q refs/heads/main && echo B_OK
# A's placeholder to B's intercepted host.
if call "$A_KEY" {b} | grep -q refs/heads/main; then echo A_TO_B_PASSED; else echo A_TO_B_REFUSED; fi
# A's placeholder in plain HTTP to a listed host.
exec 3<>/dev/tcp/127.0.0.1/$(proxy_port)
printf 'GET http://127.0.0.1:{plain}/ HTTP/1.1\r\nHost: x\r\nX-Key: %s\r\n\r\n' "$A_KEY" >&3
echo "PLAIN: $(head -n1 <&3 | tr -d '\r')"
exec 3<&-
# The leak search. The values come reversed, so this script (its argv in
# /proc) holds neither; the patterns reach grep through a pipe.
rv() {{ local s=$1 o= i; for ((i=${{#s}}-1; i>=0; i--)); do o+=${{s:i:1}}; done; printf '%s\n' "$o"; }}
pat() {{ rv '{ra}'; rv '{rb}'; rv '{rta}'; rv '{rtb}'; }}
echo "SEARCH_WORKS: $(env | grep -c -F -f <(printf '%s\n' "$A_KEY"))"
echo "ENV_HITS: $(env | grep -c -F -f <(pat))"
echo "PROC_HITS: $(cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' '\n' | grep -c -F -f <(pat))"
echo "FS_HITS: $(grep -rIl -F -f <(pat) / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr --exclude-dir=dev 2>/dev/null | wc -l)"
"#,
        plain = plain.port,
        ra = reversed(&value_a),
        rb = reversed(&value_b),
        rta = reversed(&tok_a),
        rtb = reversed(&tok_b),
    );
    let gate = w.path().join("gate");
    std::fs::create_dir_all(&gate).expect("mkdir");
    let body = format!(
        "base_image = \"{}\"\ncommand = [\"/bin/bash\", \"-c\", {}]\nrepo = \"{}\"\n\
         egress = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\", \"127.0.0.1:{p}\"]\n\
         mounts = [{{ source = \"{}\", target = \"/gate\" }}]\n\
         credentials = [\n\
           {{ name = \"A_KEY\", source = \"HOST_A_KEY\", inject = {{ hosts = [\"127.0.0.1:{a}\"], header = \"authorization\", format = \"Basic {{}}\" }} }},\n\
           {{ name = \"B_KEY\", file = \"{}\", inject = {{ hosts = [\"127.0.0.1:{b}\"], header = \"authorization\", format = \"Basic {{}}\" }} }},\n\
         ]\n",
        test_image(),
        toml_string(&script),
        w.repo_url,
        gate.display(),
        file_b.display(),
        p = plain.port,
    );
    w.profile("inj", &body);
    w.request("r", "profile = \"inj\"\n");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_ps(std::sync::Arc::clone(&stop));
    w.start_daemon_with(
        &[("HOST_A_KEY", &value_a)],
        &["--egress-ca-file", ca.to_str().expect("utf8")],
    );
    let s = w.wait_for("r", Duration::from_secs(90), |s| {
        s["phase"] == "running" || s["phase"] == "done"
    });
    assert_eq!(s["phase"], "running", "{s}\n{}", w.log());
    let container = s["container"].as_str().expect("container").to_string();
    let inspect = Command::new("podman")
        .args(["inspect", &container])
        .output()
        .expect("inspect");
    assert!(inspect.status.success());
    w.open_gate();
    let s = w.wait_done("r");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ps = sampler.join().expect("ps sampler");
    let console = w.console("r");
    assert_eq!(s["outcome"], "success", "{s}\n{console}\n{}", w.log());
    for want in [
        "PH_A",
        "PH_B",
        "PH_DISTINCT",
        "CA: /agentd/ca/bundle.pem /agentd/ca/bundle.pem /agentd/ca/bundle.pem /agentd/ca/ca.pem",
        "KEYS_IN_CA: 0",
        "A_OK",
        "B_OK",
        "A_TO_B_REFUSED",
        "PLAIN: HTTP/1.1 403 Forbidden",
        "SEARCH_WORKS: 1",
        "ENV_HITS: 0",
        "PROC_HITS: 0",
        "FS_HITS: 0",
    ] {
        assert!(
            console.lines().any(|l| l == want),
            "missing {want:?} in:\n{console}"
        );
    }
    // Each forge got its own value, and never another one.
    let (log_a, log_b) = (forge_a.requests(), forge_b.requests());
    assert!(
        log_a.contains("auth=ok") && !log_a.contains("auth=bad"),
        "{log_a}"
    );
    assert!(!log_a.contains("auth=missing"), "{log_a}");
    assert!(
        log_b.contains("auth=ok") && !log_b.contains("auth=bad"),
        "{log_b}"
    );
    assert_eq!(plain.seen(), 0, "the plain request never left the proxy");

    let dir = w.audit_dir("r");
    let lines = egress_lines(&dir);
    let denied = |port: u16| {
        lines
            .iter()
            .filter(|l| l["port"] == port && l["decision"] == "denied")
            .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        denied(b),
        [format!("credential placeholder sent to 127.0.0.1:{b}")],
        "{lines:?}"
    );
    assert_eq!(
        denied(plain.port),
        [format!(
            "credential placeholder sent to 127.0.0.1:{}",
            plain.port
        )],
        "{lines:?}"
    );
    assert!(denied(a).is_empty(), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["port"] == a && l["decision"] == "allowed"),
        "{lines:?}"
    );

    let haystacks = leak_haystacks(
        &w,
        vec![
            ("podman inspect".into(), inspect.stdout),
            ("ps".into(), ps.concat()),
            ("console".into(), console.into_bytes()),
        ],
    );
    let mut saw_record = false;
    for (name, bytes) in &haystacks {
        saw_record |= name.contains("/audit/");
        let text = String::from_utf8_lossy(bytes);
        for secret in [&value_a, &value_b, &tok_a, &tok_b] {
            assert!(
                !text.contains(secret.as_str()),
                "a value leaked into {name}"
            );
        }
    }
    assert!(saw_record, "the record was searched");
}

#[test]
fn after_a_restart_the_session_placeholder_still_gets_its_value_issue_21() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let (ca, cert, key) = ca_and_leaf(&w.path().join("tls"));
    let srv = w.path().join("srv");
    bare_repo(&srv.join("r.git"), "still served");
    let tok = format!("tok-{}", agentd::new_session_id());
    let forge = GitServer::start(&w.path().join("g"), &srv, Some((&cert, &key)), Some(&tok));
    let value = base64(format!("x:{tok}").as_bytes());
    let x = shared_dir(&w);
    let a = forge.port;
    let script = format!(
        r#"export NO_PROXY= no_proxy=
round() {{
  until [ -e /x/go$1 ]; do sleep 0.05; done
  if git -c http.extraHeader="Authorization: Basic $A_KEY" ls-remote https://127.0.0.1:{a}/r.git 2>/x/err$1 | grep -q refs/heads/main; then r=ok; else r=fail; fi
  echo "$r $A_KEY" > /x/out$1
}}
round 1; round 2
"#
    );
    let body = format!(
        "base_image = \"{}\"\ncommand = [\"/bin/bash\", \"-c\", {}]\nrepo = \"{}\"\n\
         egress = [\"127.0.0.1:{a}\"]\n\
         mounts = [{{ source = \"{}\", target = \"/x\", read_only = false }}]\n\
         credentials = [{{ name = \"A_KEY\", source = \"HOST_A_KEY\", inject = {{ hosts = [\"127.0.0.1:{a}\"], header = \"authorization\", format = \"Basic {{}}\" }} }}]\n",
        test_image(),
        toml_string(&script),
        w.repo_url,
        x.display(),
    );
    w.profile("inj", &body);
    w.request("r", "profile = \"inj\"\n");
    let ca_arg = ["--egress-ca-file", ca.to_str().expect("utf8")];
    w.start_daemon_with(&[("HOST_A_KEY", &value)], &ca_arg);
    w.wait_for("r", Duration::from_secs(90), |s| s["phase"] == "running");
    std::fs::write(x.join("go1"), "").expect("go1");
    let first = wait_file(&x.join("out1"), Duration::from_secs(30), &w);
    assert!(first.starts_with("ok agentd-ph-"), "{first}");

    // kill -9: the restarted daemon reads the placeholder back from the
    // work folder, the value from its source, and the CA from its state.
    w.kill9();
    w.start_daemon_with(&[("HOST_A_KEY", &value)], &ca_arg);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w.log().matches("egress proxy serving the session").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not come back\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(x.join("go2"), "").expect("go2");
    let second = wait_file(&x.join("out2"), Duration::from_secs(30), &w);
    assert_eq!(
        second,
        first,
        "{}",
        std::fs::read_to_string(x.join("err2")).unwrap_or_default()
    );
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let log = forge.requests();
    assert!(
        log.contains("auth=ok") && !log.contains("auth=bad"),
        "{log}"
    );
    let lines = egress_lines(&w.audit_dir("r"));
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| l["decision"] == "allowed"),
        "{lines:?}"
    );
}

#[test]
fn an_injected_credential_whose_source_is_missing_fails_the_start_before_any_container_issue_21() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let body = format!(
        "base_image = \"{}\"\ncommand = [\"/bin/true\"]\nrepo = \"{}\"\negress = [\"127.0.0.1:9\"]\n\
         credentials = [{{ name = \"A_KEY\", source = \"HOST_UNSET_KEY\", inject = {{ hosts = [\"127.0.0.1:9\"], header = \"x-api-key\" }} }}]\n",
        test_image(),
        w.repo_url,
    );
    w.profile("inj", &body);
    w.request("r", "profile = \"inj\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "start_failed", "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("credential `A_KEY`") && msg.contains("HOST_UNSET_KEY"),
        "{msg}"
    );
    assert_eq!(
        w.containers_created_for("r"),
        0,
        "refused before any container"
    );
}
