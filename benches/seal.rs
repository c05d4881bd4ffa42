//! Time to finalize and seal an audit record (issue 5's figure): one record
//! with 10,000 small files, one with a single 200 MB file. Run with
//! `cargo bench --bench seal` (add `-- --quick` for a reduced size).

use std::time::Instant;

use agentd::{Limits, Record, SealOptions, SessionRecord};

fn record(root: &std::path::Path, sid: &str) -> Record {
    let r = Record {
        dir: root.join("bench").join(sid),
    };
    std::fs::create_dir_all(r.dir.join("agentd")).expect("mkdir");
    std::fs::create_dir_all(r.session_dir()).expect("mkdir");
    std::fs::write(r.console_path(), "console\n").expect("write");
    r
}

fn start_form(sid: &str) -> SessionRecord {
    SessionRecord {
        schema_version: 1,
        session_id: sid.into(),
        profile: "bench".into(),
        request: "r".into(),
        spec_sha256: "0".repeat(64),
        repo: "file:///x".into(),
        work_unit: None,
        start_timestamp: jiff::Timestamp::now(),
        end_timestamp: Some(jiff::Timestamp::now()),
        outcome: Some(agentd::Outcome::Success),
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

/// The daemon's defaults: 1 GiB of `session/` hashed, session uid 10001.
fn options() -> SealOptions {
    SealOptions {
        limits: Limits::with_max_bytes(1 << 30),
        session_uid: 10_001,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (files, big_mb) = if quick { (500, 10) } else { (10_000, 200) };
    let tmp = tempfile::tempdir().expect("tempdir");

    let r = record(tmp.path(), "small");
    for i in 0..files {
        let d = r.session_dir().join(format!("d{}", i / 100));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
    }
    let t = Instant::now();
    r.seal(&start_form("small"), &options()).expect("seal");
    let small = t.elapsed();

    let r = record(tmp.path(), "big");
    let chunk = vec![0xabu8; 1 << 20];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(r.session_dir().join("big.bin")).expect("create");
        for _ in 0..big_mb {
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let t = Instant::now();
    r.seal(&start_form("big"), &options()).expect("seal");
    let big = t.elapsed();

    println!(
        "{{\"figure\": \"seal\", \"small_files\": {files}, \"small_files_s\": {:.3}, \"big_file_mb\": {big_mb}, \"big_file_s\": {:.3}, \"big_file_mb_per_s\": {:.0}}}",
        small.as_secs_f64(),
        big.as_secs_f64(),
        big_mb as f64 / big.as_secs_f64()
    );
    // Sealed folders are 0555: make them removable for the temp dir's drop.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(tmp.path())
        .status();
}
