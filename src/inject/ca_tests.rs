//! Tests of the daemon CA (issue 21): made once with its key 0600, read
//! back the same, leaves that a client trusting only it accepts.

use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn the_ca_is_made_once_with_a_private_key_and_read_back_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let first = DaemonCa::load_or_create(&ca_dir).expect("create");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&ca_dir), 0o700);
    let again = DaemonCa::load_or_create(&ca_dir).expect("reload");
    assert_eq!(
        first.cert_der(),
        again.cert_der(),
        "the same CA after a restart"
    );
    assert!(first.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    // A key others could read is refused, not used.
    std::fs::set_permissions(
        ca_dir.join(KEY_FILE),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    let e = DaemonCa::load_or_create(&ca_dir)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("mode 0600"), "{e}");
}

#[test]
fn session_files_hold_the_roots_the_ca_and_the_extra_ca_but_no_key_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DaemonCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let other = DaemonCa::load_or_create(&dir.path().join("other")).expect("other ca");
    let roots = host_roots();
    let out = dir.path().join("session");
    std::fs::create_dir(&out).expect("mkdir");
    write_session_files(&out, &roots, &ca, std::slice::from_ref(other.cert_der())).expect("write");
    let bundle = std::fs::read(out.join("bundle.pem")).expect("bundle");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bundle)
        .collect::<Result<_, _>>()
        .expect("pem");
    assert_eq!(certs.len(), roots.len() + 2);
    assert!(certs.contains(ca.cert_der()) && certs.contains(other.cert_der()));
    assert_eq!(
        std::fs::read_to_string(out.join("ca.pem")).expect("ca.pem"),
        ca.cert_pem()
    );
    for f in ["bundle.pem", "ca.pem"] {
        let text = std::fs::read_to_string(out.join(f)).expect("read");
        assert!(!text.contains("PRIVATE KEY"), "{f} holds no key");
    }
}

#[test]
fn a_ca_file_without_certificates_is_refused_with_a_hint_issue_21() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("ca.pem");
    std::fs::write(&p, "not pem\n").expect("write");
    let e = read_ca_file(&p).expect_err("refused").to_string();
    assert!(
        e.contains("holds no PEM certificate") && e.contains("hint"),
        "{e}"
    );
}
