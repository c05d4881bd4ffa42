use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::audit::verify::{Finding, verify};

const UID: u32 = 10_001;

fn start_form() -> SessionRecord {
    SessionRecord {
        schema_version: 1,
        session_id: "0123456789abcdef".into(),
        profile: "p".into(),
        request: "r".into(),
        spec_sha256: "0".repeat(64),
        repo: "file:///x".into(),
        work_unit: None,
        start_timestamp: jiff::Timestamp::now(),
        end_timestamp: Some(jiff::Timestamp::now()),
        outcome: Some(crate::observed::Outcome::Success),
        exit_code: Some(0),
        image: "img".into(),
        image_id: None,
        image_digest: None,
        message: None,
        cut: None,
        changes: None,
        push: None,
    }
}

fn record(root: &Path) -> Record {
    let r = Record {
        dir: root.join("p/0123456789abcdef"),
    };
    fs::create_dir_all(r.dir.join("agentd")).expect("mkdir");
    fs::create_dir_all(r.session_dir()).expect("mkdir");
    fs::write(r.console_path(), "console\n").expect("write");
    std::os::unix::fs::chown(r.session_dir(), Some(UID), Some(UID)).expect("chown");
    r
}

fn opts(max_bytes: u64) -> SealOptions {
    SealOptions {
        limits: Limits::with_max_bytes(max_bytes),
        session_uid: UID,
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every entry below `dir` is root's, and nothing is setuid, setgid or
/// writable by others (symlinks aside: their modes mean nothing).
fn assert_taken_back(dir: &Path) {
    for e in walkdir::WalkDir::new(dir) {
        let e = e.expect("walk");
        let m = e.path().symlink_metadata().expect("stat");
        assert_eq!(m.uid(), 0, "{} owned by root", e.path().display());
        if !m.file_type().is_symlink() {
            assert_eq!(
                m.mode() & 0o6022,
                0,
                "{}: mode {:o}",
                e.path().display(),
                m.mode()
            );
        }
    }
}

fn odd_modes(session: &Path) {
    fs::create_dir_all(session.join("closed/inner")).expect("mkdir");
    fs::write(session.join("closed/inner/f"), "f").expect("write");
    fs::write(session.join("suid"), "#!/bin/sh\n").expect("write");
    fs::write(session.join("open"), "w").expect("write");
    chmod(&session.join("suid"), 0o6777);
    chmod(&session.join("open"), 0o666);
    chmod(&session.join("closed/inner"), 0o000);
    chmod(&session.join("closed"), 0o777);
    for p in ["closed", "closed/inner", "closed/inner/f", "suid", "open"] {
        std::os::unix::fs::lchown(session.join(p), Some(UID), Some(UID)).expect("chown");
    }
}

#[test]
fn odd_modes_are_taken_back_and_names_with_newlines_verify() {
    let t = tempfile::tempdir().expect("tempdir");
    let r = record(t.path());
    odd_modes(&r.session_dir());
    let evil = format!("x\n{}  forged", "b".repeat(64));
    fs::write(r.session_dir().join(&evil), "newline").expect("write");
    fs::write(r.session_dir().join("back\\slash"), "bs").expect("write");
    assert_eq!(
        r.seal(&start_form(), &opts(1 << 20)).expect("seal"),
        Sealed::Sealed { cut: None }
    );
    assert_taken_back(&r.dir);
    assert_eq!(
        fs::metadata(r.session_dir().join("closed/inner"))
            .expect("stat")
            .mode()
            & 0o7777,
        0o555
    );
    let manifest = fs::read(r.dir.join(MANIFEST)).expect("manifest");
    assert_eq!(manifest.iter().filter(|b| **b == b'\n').count(), 7);
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "--quiet", MANIFEST])
        .current_dir(&r.dir)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{check:?}");
    assert_eq!(verify(&r.dir), vec![]);
    chmod(&r.session_dir(), 0o755);
    chmod(&r.session_dir().join(&evil), 0o644);
    fs::write(r.session_dir().join(&evil), "changed").expect("write");
    assert_eq!(
        verify(&r.dir),
        vec![Finding::Changed(format!(
            "session/x\\n{}  forged",
            "b".repeat(64)
        ))]
    );
}

#[test]
fn a_multi_linked_file_refuses_the_seal_but_the_folder_is_taken_back() {
    let t = tempfile::tempdir().expect("tempdir");
    let r = record(t.path());
    odd_modes(&r.session_dir());
    fs::hard_link(r.session_dir().join("suid"), r.session_dir().join("alias")).expect("link");
    // Someone else's file linked in is never changed.
    let other = r.session_dir().join("other");
    fs::write(&other, "o").expect("write");
    chmod(&other, 0o646);
    std::os::unix::fs::chown(&other, Some(4242), Some(4242)).expect("chown");
    fs::hard_link(&other, t.path().join("other-alias")).expect("link");
    let Sealed::Refused { why, cut: None } = r.seal(&start_form(), &opts(1 << 20)).expect("seal")
    else {
        panic!("refused")
    };
    assert!(why.contains("2 hard links"), "{why}");
    assert!(r.read_session().is_none(), "no final session.json");
    assert!(!r.dir.join(MANIFEST).exists(), "never sealed");
    fs::remove_file(&other).expect("rm");
    assert_taken_back(&r.session_dir());
    let alias = fs::metadata(r.session_dir().join("alias")).expect("stat");
    assert_eq!(alias.mode() & 0o7777, 0o444, "only permissions dropped");
    let other = fs::metadata(t.path().join("other-alias")).expect("stat");
    assert_eq!((other.uid(), other.mode() & 0o7777), (4242, 0o646));
}

#[test]
fn over_budget_content_is_cut_without_being_read() {
    let t = tempfile::tempdir().expect("tempdir");
    let r = record(t.path());
    let s = r.session_dir();
    // A sparse file far larger than the budget (reading it would take hours).
    fs::File::create(s.join("huge"))
        .expect("create")
        .set_len(1 << 40)
        .expect("truncate");
    fs::write(s.join("small"), "kept").expect("write");
    let mut deep = s.join("deep");
    for _ in 0..(MAX_DEPTH + 10) {
        deep.push("d");
    }
    fs::create_dir_all(&deep).expect("mkdir");
    let started = std::time::Instant::now();
    let Sealed::Sealed { cut: Some(cut) } = r.seal(&start_form(), &opts(1 << 20)).expect("seal")
    else {
        panic!("sealed with a cut")
    };
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(cut.entries, 2, "{cut:?}");
    assert_eq!(cut.bytes, 1 << 40);
    assert!(cut.reason.contains("byte budget") && cut.reason.contains("deeper than 256"));
    assert!(cut.paths.contains(&"session/huge".to_string()), "{cut:?}");
    assert!(!s.join("huge").exists());
    assert!(s.join("small").exists());
    let rec = r.read_session().expect("final form");
    assert_eq!(rec.cut, Some(cut));
    assert_eq!(verify(&r.dir), vec![]);
}

#[test]
fn entries_past_the_budget_are_cut() {
    let t = tempfile::tempdir().expect("tempdir");
    let r = record(t.path());
    for i in 0..50 {
        fs::write(r.session_dir().join(format!("f{i:02}")), "x").expect("write");
    }
    let o = SealOptions {
        limits: Limits {
            max_bytes: 1 << 20,
            max_entries: 20,
            max_depth: 8,
        },
        session_uid: UID,
    };
    let Sealed::Sealed { cut: Some(cut) } = r.seal(&start_form(), &o).expect("seal") else {
        panic!("cut")
    };
    assert_eq!(cut.entries, 30);
    assert_eq!(cut.paths.len(), CUT_PATHS_SHOWN);
    assert_eq!(fs::read_dir(r.session_dir()).expect("ls").count(), 20);
    assert_eq!(verify(&r.dir), vec![]);
}

/// A folder in `session/` is swapped for a symlink to a host folder, over
/// and over, while the record is sealed: the walk is by descriptor with
/// O_NOFOLLOW, so the host folder and its file never change.
#[test]
fn sealing_never_follows_a_symlink_swapped_in() {
    let t = tempfile::tempdir().expect("tempdir");
    let host = t.path().join("host");
    fs::create_dir(&host).expect("mkdir");
    fs::write(host.join("secret"), "s").expect("write");
    chmod(&host.join("secret"), 0o600);
    chmod(&host, 0o750);
    std::os::unix::fs::chown(host.join("secret"), Some(4242), Some(4242)).expect("chown");
    std::os::unix::fs::chown(&host, Some(4242), Some(4242)).expect("chown");
    let r = record(t.path());
    let s = r.session_dir();
    fs::create_dir(s.join("d")).expect("mkdir");
    fs::write(s.join("d/secret"), "agent").expect("write");
    fs::write(s.join("f"), "agent").expect("write");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (s, host, stop) = (s.clone(), host.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::rename(s.join("d"), s.join("d.real"));
                let _ = std::os::unix::fs::symlink(&host, s.join("d"));
                let _ = fs::rename(s.join("f"), s.join("f.real"));
                let _ = std::os::unix::fs::symlink(host.join("secret"), s.join("f"));
                std::thread::yield_now();
                let _ = fs::remove_file(s.join("d"));
                let _ = fs::rename(s.join("d.real"), s.join("d"));
                let _ = fs::remove_file(s.join("f"));
                let _ = fs::rename(s.join("f.real"), s.join("f"));
                swaps += 1;
            }
            swaps
        })
    };
    let mut outcomes = (0, 0);
    for _ in 0..300 {
        match r.seal(&start_form(), &opts(1 << 20)) {
            Ok(_) => outcomes.0 += 1,
            Err(_) => outcomes.1 += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 0);
    let m = fs::metadata(host.join("secret")).expect("stat");
    assert_eq!((m.uid(), m.mode() & 0o7777), (4242, 0o600), "{outcomes:?}");
    let m = fs::metadata(&host).expect("stat");
    assert_eq!((m.uid(), m.mode() & 0o7777), (4242, 0o750), "{outcomes:?}");
    assert_eq!(fs::read_to_string(host.join("secret")).expect("read"), "s");
}
