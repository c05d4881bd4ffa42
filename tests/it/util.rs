//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command running the agentd binary with a clean agentd environment.
pub fn agentd() -> Command {
    let mut c = Command::new(cargo_bin("agentd"));
    for var in [
        "AGENTD_DESIRED",
        "AGENTD_STATE",
        "AGENTD_AUDIT_ROOT",
        "AGENTD_MAX_SESSIONS",
    ] {
        c.env_remove(var);
    }
    c
}

/// Write `text` at `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create folders");
    }
    std::fs::write(&p, text).expect("write file");
    p
}

/// The test image built by scripts/setup-podman.
pub fn test_image() -> String {
    std::env::var("AGENTD_TEST_IMAGE").unwrap_or_else(|_| "localhost/agentd-test:bookworm".into())
}

/// Podman is required: tests that need it fail loudly when it is missing,
/// unless a developer opted out with AGENTD_NO_PODMAN=1 (then they return
/// early, and say so).
pub fn require_podman() -> bool {
    if std::env::var("AGENTD_NO_PODMAN").as_deref() == Ok("1") {
        eprintln!("AGENTD_NO_PODMAN=1: not running this Podman test");
        return false;
    }
    let image = test_image();
    let ok = Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "podman or the test image `{image}` is unavailable: run scripts/setup-podman \
         (or set AGENTD_NO_PODMAN=1 on a machine without Podman)"
    );
    true
}
