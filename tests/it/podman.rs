//! Proof that this machine (and CI) runs real containers from the test image.

use std::process::Command;

use crate::util::{require_podman, test_image};

#[test]
fn test_image_runs_a_real_container() {
    if !require_podman() {
        return;
    }
    let out = Command::new("podman")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "1000:1000",
            &test_image(),
        ])
        .args(["/bin/sh", "-c", "echo hello-from-$(id -u); git --version"])
        .output()
        .expect("podman runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello-from-1000"), "{stdout}");
    assert!(stdout.contains("git version"), "{stdout}");
}
