use super::open::RealHost;
use super::*;

fn put(root: &Path, rel: &str, text: &str) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
    p
}

fn same_as_fresh(s: &Source, dir: &Path) {
    let (fresh, _) = load(dir, &RealHost).expect("load");
    assert_eq!(
        s.desired(),
        &fresh,
        "incremental state differs from a fresh load"
    );
    let invalid = fresh
        .requests
        .values()
        .filter(|e| matches!(e, desired::RequestEntry::Invalid(_)))
        .count();
    assert_eq!(
        s.invalid_requests(),
        invalid,
        "invalid count kept per change"
    );
}

#[test]
fn only_changed_files_are_parsed_and_results_match_a_fresh_load() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    put(
        dir,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
    );
    for i in 0..50 {
        put(dir, &format!("requests/r{i}.toml"), "profile = \"p\"\n");
    }
    let mut s = Source::new(dir);
    s.full_scan(&RealHost).expect("scan");
    assert_eq!(s.last_parsed, 51);
    s.full_scan(&RealHost).expect("scan");
    assert_eq!(s.last_parsed, 0, "a rescan re-parses nothing unchanged");

    // One new file: one parse.
    let new = put(dir, "requests/new.toml", "profile = \"q\"\n");
    s.update_paths(&[new.clone()].into(), &RealHost)
        .expect("update");
    assert_eq!(s.last_parsed, 1);
    assert!(
        matches!(
            s.desired().requests["new"],
            desired::RequestEntry::Invalid(_)
        ),
        "profile q unknown"
    );
    same_as_fresh(&s, dir);

    // The profile it names appears: only the profile is read, and the
    // request naming it is re-checked without being re-read.
    let q = put(
        dir,
        "profiles/q.yaml",
        "base_image: i\ncommand: [x]\nrepo: /r\n",
    );
    s.update_paths(&[q.clone()].into(), &RealHost)
        .expect("update");
    assert_eq!(s.last_parsed, 1);
    assert!(matches!(
        s.desired().requests["new"],
        desired::RequestEntry::Valid(_)
    ));
    same_as_fresh(&s, dir);

    // A duplicate stem, then its removal.
    let dup = put(
        dir,
        "profiles/team/q.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\n",
    );
    s.update_paths(&[dup.clone()].into(), &RealHost)
        .expect("update");
    assert!(s.desired().invalid_profiles.contains_key("q"));
    same_as_fresh(&s, dir);
    std::fs::remove_file(&dup).expect("rm");
    s.update_paths(&[dup].into(), &RealHost).expect("update");
    assert!(s.desired().profiles.contains_key("q"));
    same_as_fresh(&s, dir);

    // Deleting a request; an event on a folder rescans that folder.
    std::fs::remove_file(&new).expect("rm");
    std::fs::remove_file(dir.join("requests/r3.toml")).expect("rm");
    s.update_paths(&[new, dir.join("requests")].into(), &RealHost)
        .expect("update");
    assert!(!s.desired().requests.contains_key("new") && !s.desired().requests.contains_key("r3"));
    assert_eq!(s.last_parsed, 0);
    same_as_fresh(&s, dir);

    // Hidden and temp files are ignored even when events name them.
    let tmp = put(dir, "requests/.x.toml.123.tmp", "garbage");
    s.update_paths(&[tmp].into(), &RealHost).expect("update");
    assert_eq!(s.last_parsed, 0);
    same_as_fresh(&s, dir);
}

#[test]
fn a_missing_folder_is_unavailable_and_changes_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    put(
        dir,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
    );
    put(dir, "requests/r.toml", "profile = \"p\"\n");
    let mut s = Source::new(dir);
    s.full_scan(&RealHost).expect("scan");
    std::fs::rename(dir.join("requests"), dir.join("away")).expect("mv");
    assert!(s.full_scan(&RealHost).is_err());
    assert!(
        s.update_paths(&[dir.join("requests")].into(), &RealHost)
            .is_err()
    );
    assert!(
        s.desired().requests.contains_key("r"),
        "nothing is forgotten while the source is away"
    );
}

// --- issue 13: planted links and FIFOs ---

#[test]
fn planted_links_are_reported_and_skipped_while_the_rest_loads_issue_13() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    let outside = tempfile::tempdir().expect("tempdir");
    put(
        dir,
        "profiles/p.toml",
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\n",
    );
    put(dir, "requests/ok.toml", "profile = \"p\"\n");
    put(outside.path(), "stolen.toml", "profile = \"p\"\n");
    symlink("/", dir.join("requests/evil")).expect("ln");
    symlink("loop", dir.join("requests/loop")).expect("ln");
    symlink("self.toml", dir.join("requests/self.toml")).expect("ln");
    symlink(
        outside.path().join("stolen.toml"),
        dir.join("requests/out.toml"),
    )
    .expect("ln");
    symlink(outside.path(), dir.join("profiles/team")).expect("ln");
    // A link to a file inside the folder (ConfigMap style) is read.
    put(dir, "requests/..data/cm.toml", "profile = \"p\"\n");
    symlink("..data/cm.toml", dir.join("requests/cm.toml")).expect("ln");
    nix::unistd::mkfifo(
        &dir.join("requests/fifo.toml"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .expect("mkfifo");

    let mut s = Source::new(dir);
    s.full_scan(&RealHost)
        .expect("a planted link never makes the source unavailable");
    let want_valid = ["cm", "ok"];
    for id in want_valid {
        assert!(
            matches!(
                s.desired().requests.get(id),
                Some(desired::RequestEntry::Valid(_))
            ),
            "{id}: {:?}",
            s.desired().requests.get(id)
        );
    }
    fn invalid(s: &Source, id: &str) -> String {
        match s.desired().requests.get(id) {
            Some(desired::RequestEntry::Invalid(r)) => r.summary(),
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(invalid(&s, "out").contains("symlink leads outside its folder"));
    assert!(invalid(&s, "self").contains("symlink loop"));
    assert!(!s.desired().requests.contains_key("fifo"));
    let skipped: Vec<String> = s
        .desired()
        .skipped
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:#?}");
    assert!(
        skipped[0].contains("profiles/team: symlink to a folder"),
        "{skipped:#?}"
    );
    assert!(
        skipped[1].contains("requests/evil: symlink to a folder"),
        "{skipped:#?}"
    );
    assert!(
        skipped[2].contains("requests/loop: symlink loop"),
        "{skipped:#?}"
    );
    same_as_fresh(&s, dir);

    // Events naming paths behind a symlinked folder are not followed.
    s.update_paths(
        &[
            dir.join("profiles/team/x.toml"),
            dir.join("requests/evil/etc/passwd"),
        ]
        .into(),
        &RealHost,
    )
    .expect("update");
    assert_eq!(s.last_parsed, 0);
    // An event on a planted link re-classifies it, never reads through it.
    s.update_paths(&[dir.join("requests/out.toml")].into(), &RealHost)
        .expect("update");
    assert!(invalid(&s, "out").contains("symlink leads outside its folder"));
    same_as_fresh(&s, dir);
}

#[test]
fn a_fifo_is_never_opened_blocking_issue_13() {
    let d = tempfile::tempdir().expect("tempdir");
    let fifo = d.path().join("x.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // These would hang forever with a blocking open (no writer).
    assert!(read_capped(&fifo, 10).is_err());
    assert!(RealHost.read(&fifo).is_none());
    assert!(
        RealHost
            .read_beneath(d.path(), Path::new("x.toml"), 10)
            .is_err()
    );
}

#[test]
fn an_artifact_is_read_beneath_the_requests_folder_only_issue_13() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    put(outside.path(), "secret.json", "{\"secret\": 1}");
    let req = d.path().join("requests");
    put(&req, "in/a.json", "{\"a\": 1}");
    symlink(outside.path(), req.join("out")).expect("ln");
    symlink("in", req.join("sub")).expect("ln");
    symlink(outside.path().join("secret.json"), req.join("abs.json")).expect("ln");
    let read = |rel: &str| RealHost.read_beneath(&req, Path::new(rel), 1024);
    assert_eq!(read("in/a.json").expect("inside"), b"{\"a\": 1}");
    // A link that stays inside is fine; one that leaves is refused.
    assert_eq!(read("sub/a.json").expect("inside link"), b"{\"a\": 1}");
    let why = read("out/secret.json").expect_err("outside");
    assert!(why.contains("resolves outside"), "{why}");
    assert!(
        read("abs.json")
            .expect_err("absolute link")
            .contains("resolves outside")
    );
    assert!(
        read("in")
            .expect_err("a folder")
            .contains("not a regular file")
    );
}
