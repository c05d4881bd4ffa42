//! Results capture against real git, without a container: a work folder
//! laid out as a session's, a clone, the base recorded, then what an agent
//! would do, then `finish` into a record folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::testkit::git;

struct Session {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    record: PathBuf,
    home: PathBuf,
    repo: PathBuf,
}

fn no_secret(_: &crate::desired::SecretSource) -> Result<String, String> {
    Err("no secrets here".into())
}

/// A work folder whose clone came from a repository with README.md and a
/// second branch, and a record folder; the base recorded.
async fn session(plan: Plan) -> Session {
    session_of(plan, true).await
}

/// As [`session`]; `commits`: false clones an empty repository.
async fn session_of(plan: Plan, commits: bool) -> Session {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    git(&src, &["init", "-q"]);
    if commits {
        std::fs::write(src.join("README.md"), "hello\n").expect("write");
        std::fs::write(src.join("big.txt"), "x\n".repeat(100)).expect("write");
        git(&src, &["add", "."]);
        git(&src, &["commit", "-qm", "first"]);
        std::fs::write(src.join("README.md"), "hello again\n").expect("write");
        git(&src, &["commit", "-qam", "second"]);
        git(&src, &["branch", "other"]);
    }
    let work = tmp.path().join("work");
    let repo = work.join("home/repo");
    std::fs::create_dir_all(work.join("home")).expect("mkdir");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--no-local",
            src.to_str().expect("utf8"),
            repo.to_str().expect("utf8"),
        ],
    );
    let home = tmp.path().join("git-home");
    std::fs::create_dir_all(&home).expect("mkdir");
    record_base(&work, &home, plan, &Default::default(), None)
        .await
        .expect("base recorded");
    let record = tmp.path().join("record");
    std::fs::create_dir_all(record.join("agentd")).expect("mkdir");
    Session {
        _tmp: tmp,
        work,
        record,
        home,
        repo,
    }
}

fn plan(max: u64) -> Plan {
    Plan {
        max_bytes: max,
        push: None,
    }
}

fn host(home: &Path) -> Host<'_> {
    Host {
        git_home: home,
        read_secret: &no_secret,
        sandbox: None,
    }
}

async fn finish_it(s: &Session) -> Captured {
    finish(&s.work, &s.record, Outcome::Success, &host(&s.home)).await
}

#[tokio::test]
async fn nothing_changed_gives_no_files_and_zero_commits_issue_20() {
    let s = session(plan(1 << 20)).await;
    let c = finish_it(&s).await;
    let ch = c.changes.expect("changes");
    assert_eq!(ch.commits, 0);
    assert_eq!(ch.base, ch.head);
    assert!(ch.base.is_some());
    assert_eq!(
        (ch.files_changed, ch.bundle_bytes, ch.patch_bytes),
        (0, 0, 0)
    );
    assert!(!ch.truncated, "{:?}", ch.cut);
    for f in FILES {
        assert!(!s.record.join("agentd").join(f).exists(), "{f}");
    }
}

#[tokio::test]
async fn commits_and_uncommitted_work_come_back_as_bundle_and_patches_issue_20() {
    let s = session(plan(1 << 20)).await;
    let r = &s.repo;
    git(r, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(r.join("README.md"), "hello\nmore\n").expect("write");
    git(r, &["commit", "-qam", "second"]);
    std::fs::write(r.join("new.txt"), "one\n").expect("write");
    git(r, &["add", "new.txt"]);
    git(r, &["commit", "-qm", "third"]);
    // Uncommitted: a change, an untracked file, a binary file, a deletion,
    // an ignored file, and things git would never follow.
    std::fs::write(r.join("README.md"), "hello\nmore\nuncommitted\n").expect("write");
    std::fs::write(r.join("untracked.txt"), "fresh\n").expect("write");
    std::fs::write(r.join("blob.bin"), [0u8, 1, 2, 255, 0, 7]).expect("write");
    std::fs::remove_file(r.join("big.txt")).expect("rm");
    std::fs::write(r.join(".gitignore"), "*.log\n").expect("write");
    std::fs::write(r.join("debug.log"), "ignored\n").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", r.join("link")).expect("symlink");
    nix::unistd::mkfifo(
        &r.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("fifo");
    std::fs::create_dir_all(r.join("nested/.git")).expect("mkdir");
    std::fs::write(r.join("nested/file"), "in a nested repo\n").expect("write");
    let head = git(r, &["rev-parse", "HEAD"]);

    let c = finish_it(&s).await;
    let ch = c.changes.expect("changes");
    assert_eq!(ch.commits, 2, "{ch:?}");
    assert_eq!(ch.head.as_deref(), Some(head.as_str()));
    assert_eq!(ch.refs, ["refs/heads/feature", "HEAD"]);
    assert!(
        ch.bundle_bytes > 0 && ch.patch_bytes > 0 && ch.series_bytes > 0,
        "{ch:?}"
    );
    // The nested repository is named as not captured.
    assert!(
        ch.truncated && ch.cut.iter().any(|c| c.contains("nested")),
        "{ch:?}"
    );
    let agentd = s.record.join("agentd");
    // The bundle unbundles onto the base and holds the head.
    let check = tempfile::tempdir().expect("tempdir");
    let verify = Command::new("git")
        .args(["bundle", "list-heads"])
        .arg(agentd.join("changes.bundle"))
        .current_dir(check.path())
        .output()
        .expect("git");
    let heads = String::from_utf8_lossy(&verify.stdout);
    assert!(
        heads.contains(&format!("{head} refs/heads/feature")),
        "{heads}"
    );
    let series = std::fs::read_to_string(agentd.join("commits.patch")).expect("series");
    assert!(
        series.contains("Subject: [PATCH 1/2] second")
            && series.contains("Subject: [PATCH 2/2] third"),
        "{series}"
    );
    let patch = std::fs::read(agentd.join("worktree.patch")).expect("patch");
    let text = String::from_utf8_lossy(&patch);
    assert!(text.contains("+uncommitted"), "{text}");
    assert!(
        text.contains("diff --git a/untracked.txt b/untracked.txt"),
        "{text}"
    );
    assert!(text.contains("GIT binary patch"), "{text}");
    assert!(
        text.contains("deleted file mode 100644") && text.contains("a/big.txt"),
        "{text}"
    );
    assert!(
        text.contains("new file mode 120000") && text.contains("+/etc/passwd"),
        "{text}"
    );
    assert!(
        !text.contains("debug.log") && !text.contains("fifo") && !text.contains("nested"),
        "{text}"
    );
    // The patch applies onto the head and gives the work tree.
    let check_repo = check.path().join("c");
    git(
        check.path(),
        &[
            "clone",
            "-q",
            "--no-local",
            s.repo.to_str().expect("utf8"),
            "c",
        ],
    );
    git(&check_repo, &["checkout", "-q", &head]);
    git(
        &check_repo,
        &[
            "apply",
            "--binary",
            agentd.join("worktree.patch").to_str().expect("utf8"),
        ],
    );
    assert_eq!(
        std::fs::read(check_repo.join("blob.bin")).expect("read"),
        [0u8, 1, 2, 255, 0, 7]
    );
    assert_eq!(
        std::fs::read_to_string(check_repo.join("README.md")).expect("read"),
        "hello\nmore\nuncommitted\n"
    );
    // base -> work tree: README, new.txt, untracked, blob.bin, big.txt, .gitignore, link
    assert_eq!(ch.files_changed, 7, "{ch:?}");
    assert!(ch.deletions >= 100, "{ch:?}");
    // A second finish (a retried end) gives the same without capturing again.
    assert_eq!(finish_it(&s).await.changes, Some(ch));
}

#[tokio::test]
async fn results_over_budget_are_left_out_and_named_issue_20() {
    let s = session(plan(600)).await;
    let r = &s.repo;
    std::fs::write(r.join("README.md"), "x".repeat(5000)).expect("write");
    git(r, &["commit", "-qam", "big"]);
    std::fs::write(r.join("small.txt"), "small\n").expect("write");
    std::fs::write(r.join("huge.txt"), "y".repeat(10_000)).expect("write");
    let c = finish_it(&s).await;
    let ch = c.changes.expect("changes");
    assert_eq!(ch.commits, 1);
    assert!(ch.truncated);
    assert!(
        ch.cut
            .iter()
            .any(|c| c.contains("huge.txt (10000 bytes) is past the results budget")),
        "{ch:?}"
    );
    let total = ch.bundle_bytes + ch.patch_bytes + ch.series_bytes;
    assert!(total <= 600, "{ch:?}");
    assert!(
        ch.cut
            .iter()
            .any(|c| c.contains("left out: past results_max_bytes (600 bytes")),
        "{ch:?}"
    );
    let on_disk: u64 = FILES
        .iter()
        .filter_map(|f| std::fs::metadata(s.record.join("agentd").join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert_eq!(on_disk, total);
}

#[tokio::test]
async fn planted_git_config_alternates_and_links_are_never_used_issue_20() {
    let s = session(plan(1 << 20)).await;
    let r = &s.repo;
    let markers = s.work.parent().expect("parent").join("markers");
    std::fs::create_dir_all(&markers).expect("mkdir");
    // Another repository with a commit the clone never had.
    let other = s.work.parent().expect("parent").join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    git(&other, &["init", "-q"]);
    std::fs::write(other.join("secret.txt"), "from elsewhere\n").expect("write");
    git(&other, &["add", "."]);
    git(&other, &["commit", "-qm", "elsewhere"]);
    let foreign = git(&other, &["rev-parse", "HEAD"]);
    // The agent commits, then plants.
    std::fs::write(r.join("README.md"), "changed\n").expect("write");
    git(r, &["commit", "-qam", "agent"]);
    std::fs::write(r.join("README.md"), "changed again\n").expect("write");
    let m = |name: &str| format!("touch {}", markers.join(name).display());
    let hooks = r.join(".git/planted-hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir");
    for h in [
        "pre-commit",
        "post-checkout",
        "pre-push",
        "reference-transaction",
        "fsmonitor-watchman",
    ] {
        let p = hooks.join(h);
        std::fs::write(&p, format!("#!/bin/sh\n{}\n", m(h))).expect("write");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let config = format!(
        "[core]\n\tfsmonitor = {}\n\thooksPath = {}\n\tbare = false\n[filter \"x\"]\n\tclean = {}\n\tsmudge = {}\n\tprocess = {}\n\
         [diff \"x\"]\n\tcommand = {}\n\ttextconv = {}\n[include]\n\tpath = /etc/passwd\n",
        m("fsmonitor"),
        hooks.display(),
        m("clean"),
        m("smudge"),
        m("process"),
        m("diff"),
        m("textconv"),
    );
    std::fs::write(r.join(".git/config"), config).expect("config");
    std::fs::write(r.join(".gitattributes"), "* filter=x diff=x\n").expect("attributes");
    std::fs::write(
        r.join(".git/objects/info/alternates"),
        format!("{}\n", other.join(".git/objects").display()),
    )
    .expect("alternates");
    // A branch naming the foreign commit: reachable only through alternates.
    std::fs::write(r.join(".git/refs/heads/borrowed"), format!("{foreign}\n")).expect("ref");
    // refs/heads/linked as a symlink to the other repository's ref.
    std::os::unix::fs::symlink(
        other.join(".git/refs/heads/main"),
        r.join(".git/refs/heads/linked"),
    )
    .expect("symlink");

    let c = finish_it(&s).await;
    let ch = c.changes.expect("changes");
    let planted: Vec<_> = std::fs::read_dir(&markers)
        .expect("read")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        planted.is_empty(),
        "planted commands ran on the host: {planted:?}"
    );
    // The borrowed commit's objects are not there: the fetch refuses that
    // ref alone, and nothing of the other repository reaches the record.
    assert!(ch.truncated, "{ch:?}");
    assert!(
        ch.cut
            .iter()
            .any(|c| c
                .starts_with("refs/heads/borrowed: the agent's objects did not pass git's checks")),
        "{ch:?}"
    );
    assert_eq!(ch.commits, 1, "the agent's own commit is kept: {ch:?}");
    assert_eq!(ch.refs, ["refs/heads/main", "HEAD"]);
    for f in FILES {
        if let Ok(b) = std::fs::read(s.record.join("agentd").join(f)) {
            let t = String::from_utf8_lossy(&b);
            assert!(
                !t.contains("from elsewhere") && !t.contains(&foreign),
                "{f}"
            );
        }
    }
    // The work tree is captured too, attributes and all, byte for byte.
    let patch = std::fs::read_to_string(s.record.join("agentd/worktree.patch")).expect("patch");
    assert!(
        patch.contains("+changed again") && patch.contains("+* filter=x diff=x"),
        "{patch}"
    );
}

fn push_plan(dest: &Path, branch: &str) -> Plan {
    Plan {
        max_bytes: 1 << 20,
        push: Some(model::PushPlan {
            ref_name: format!("refs/heads/{branch}"),
            when: vec![Outcome::Success],
            token: None,
            repo: crate::desired::Repo::Local(dest.to_path_buf()),
        }),
    }
}

#[tokio::test]
async fn a_push_to_a_local_repository_runs_none_of_its_hooks_and_is_never_forced_issue_20() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("dest.git");
    git(
        tmp.path(),
        &["init", "-q", "--bare", dest.to_str().expect("utf8")],
    );
    let s = session(push_plan(&dest, "agentd/p/one")).await;
    // The destination starts with the base, as the repository cloned would.
    git(
        &s.repo,
        &["push", "-q", dest.to_str().expect("utf8"), "main"],
    );
    let marker = tmp.path().join("hook-ran");
    for h in [
        "pre-receive",
        "update",
        "post-receive",
        "post-update",
        "reference-transaction",
    ] {
        let p = dest.join("hooks").join(h);
        std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("hook");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    // The destination's own config asks for its hooks and a checkout.
    git(
        &dest,
        &[
            "config",
            "core.hooksPath",
            dest.join("hooks").to_str().expect("utf8"),
        ],
    );
    git(
        &dest,
        &["config", "receive.denyCurrentBranch", "updateInstead"],
    );
    std::fs::write(s.repo.join("README.md"), "agent\n").expect("write");
    git(&s.repo, &["commit", "-qam", "agent"]);
    let head = git(&s.repo, &["rev-parse", "HEAD"]);
    let c = finish_it(&s).await;
    assert_eq!(
        c.push,
        Some(PushResult::Pushed {
            ref_name: "refs/heads/agentd/p/one".into(),
            commit: head.clone()
        })
    );
    assert_eq!(git(&dest, &["rev-parse", "refs/heads/agentd/p/one"]), head);
    assert!(!marker.exists(), "a hook of the destination ran");

    // Pushed already: a second session pushing the same commit says so.
    let again = push::push(
        &push::Pushing {
            plan: base::read(&s.work)
                .expect("base")
                .plan
                .push
                .as_ref()
                .expect("push"),
            outcome: Outcome::Success,
            head: Some(&head),
            head_is_new: true,
            repo_git: &base::repo(&s.work),
        },
        &s.home,
        &no_secret,
        None,
    )
    .await;
    assert!(matches!(again, PushResult::Pushed { .. }), "{again:?}");

    // A branch that holds other commits is never overwritten.
    let s2 = session(push_plan(&dest, "agentd/p/one")).await;
    std::fs::write(s2.repo.join("README.md"), "another agent\n").expect("write");
    git(&s2.repo, &["commit", "-qam", "another"]);
    let c2 = finish_it(&s2).await;
    match &c2.push {
        Some(PushResult::Failed { reason }) => {
            assert!(reason.contains("never forced"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(git(&dest, &["rev-parse", "refs/heads/agentd/p/one"]), head);

    // An outcome not in `when`, and a session without new commits.
    let s3 = session(push_plan(&dest, "agentd/p/three")).await;
    let c3 = finish(&s3.work, &s3.record, Outcome::WorkFailed, &host(&s3.home)).await;
    assert!(
        matches!(c3.push, Some(PushResult::Skipped { .. })),
        "{:?}",
        c3.push
    );
    let s4 = session(push_plan(&dest, "agentd/p/four")).await;
    assert_eq!(finish_it(&s4).await.push, Some(PushResult::NothingToPush));
}

#[tokio::test]
async fn a_corrupt_pack_or_a_git_folder_swapped_for_a_link_is_reported_not_followed_issue_20() {
    // A pack of garbage and a branch naming an object only it would hold.
    let s = session(plan(1 << 20)).await;
    let pack = s.repo.join(".git/objects/pack");
    let name = format!("pack-{}", "ab".repeat(20));
    let mut garbage = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
    garbage.extend(std::iter::repeat_n(0xff_u8, 4096));
    std::fs::write(pack.join(format!("{name}.pack")), &garbage).expect("write");
    std::fs::write(pack.join(format!("{name}.idx")), b"not an index").expect("write");
    std::fs::write(
        s.repo.join(".git/refs/heads/junk"),
        format!("{}\n", "cd".repeat(20)),
    )
    .expect("ref");
    let ch = finish_it(&s).await.changes.expect("changes");
    assert_eq!(ch.commits, 0, "{ch:?}");
    let cut = ch.cut.join("\n");
    assert!(
        cut.contains(&format!("pack {name}.pack is unusable")),
        "{cut}"
    );
    assert!(cut.contains("did not pass git's checks"), "{cut}");
    assert!(!s.record.join("agentd/changes.bundle").exists());

    // `.git` replaced by a link to another repository: not followed; the
    // work tree is still compared with the base.
    let s = session(plan(1 << 20)).await;
    let elsewhere = s.work.parent().expect("parent").join("elsewhere");
    std::fs::rename(s.repo.join(".git"), &elsewhere).expect("move");
    std::os::unix::fs::symlink(&elsewhere, s.repo.join(".git")).expect("link");
    std::fs::write(s.repo.join("README.md"), "edited\n").expect("write");
    let ch = finish_it(&s).await.changes.expect("changes");
    assert_eq!(ch.commits, 0);
    assert!(
        ch.cut.iter().any(|c| c.contains("no .git folder")),
        "{ch:?}"
    );
    let patch = std::fs::read_to_string(s.record.join("agentd/worktree.patch")).expect("patch");
    assert!(patch.contains("+edited"), "{patch}");
}

#[tokio::test]
async fn an_empty_repository_and_a_head_moved_back_are_measured_right_issue_20() {
    // Every commit in a clone of an empty repository is new.
    let s = session_of(plan(1 << 20), false).await;
    std::fs::write(s.repo.join("a.txt"), "a\n").expect("write");
    git(&s.repo, &["add", "a.txt"]);
    git(&s.repo, &["commit", "-qm", "one"]);
    std::fs::write(s.repo.join("a.txt"), "a\nb\n").expect("write");
    git(&s.repo, &["commit", "-qam", "two"]);
    let ch = finish_it(&s).await.changes.expect("changes");
    assert_eq!((ch.base.as_deref(), ch.commits), (None, 2), "{ch:?}");
    let series = std::fs::read_to_string(s.record.join("agentd/commits.patch")).expect("series");
    assert!(
        series.contains("[PATCH 1/2] one") && series.contains("[PATCH 2/2] two"),
        "{series}"
    );
    assert_eq!((ch.files_changed, ch.insertions), (1, 2), "{ch:?}");

    // HEAD moved back into the base's history: no new commit, and the
    // work tree is compared with where HEAD is now.
    let s = session(plan(1 << 20)).await;
    git(&s.repo, &["checkout", "-q", "HEAD~1"]);
    let back = git(&s.repo, &["rev-parse", "HEAD"]);
    let ch = finish_it(&s).await.changes.expect("changes");
    assert_eq!(ch.commits, 0);
    assert_eq!(ch.head.as_deref(), Some(back.as_str()));
    assert_eq!(ch.patch_bytes, 0, "{ch:?}");
    assert_eq!(
        (ch.files_changed, ch.deletions, ch.insertions),
        (1, 1, 1),
        "{ch:?}"
    );
}

#[tokio::test]
async fn a_sha256_repository_runs_and_its_record_says_changes_were_not_captured_issue_20() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    git(&src, &["init", "-q", "--object-format=sha256"]);
    std::fs::write(src.join("a"), "a\n").expect("write");
    git(&src, &["add", "a"]);
    git(&src, &["commit", "-qm", "a"]);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("home")).expect("mkdir");
    let repo = work.join("home/repo");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--no-local",
            src.to_str().expect("utf8"),
            repo.to_str().expect("utf8"),
        ],
    );
    let home = tmp.path().join("git-home");
    std::fs::create_dir_all(&home).expect("mkdir");
    record_base(&work, &home, plan(1 << 20), &Default::default(), None)
        .await
        .expect("the start goes on");
    let record = tmp.path().join("record");
    std::fs::create_dir_all(record.join("agentd")).expect("mkdir");
    let c = finish(&work, &record, Outcome::Success, &host(&home)).await;
    let ch = c.changes.expect("changes");
    assert!(ch.truncated && ch.cut[0].contains("SHA-256"), "{ch:?}");
}

/// A repository with two commits, its clone in `<tmp>/seed` (the daemon's
/// seed) and a copy of that in `<tmp>/work/home/repo` (the session's).
fn seeded(tmp: &Path) -> (PathBuf, PathBuf, String) {
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    git(&src, &["init", "-q"]);
    std::fs::write(src.join("README.md"), "hello\n").expect("write");
    git(&src, &["add", "."]);
    git(&src, &["commit", "-qm", "first"]);
    let head = git(&src, &["rev-parse", "HEAD"]).trim().to_string();
    let seed = tmp.join("seed");
    git(
        tmp,
        &[
            "clone",
            "-q",
            "--no-local",
            src.to_str().expect("utf8"),
            seed.to_str().expect("utf8"),
        ],
    );
    let work = tmp.join("work");
    std::fs::create_dir_all(work.join("home")).expect("mkdir");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&seed)
        .arg(work.join("home/repo"))
        .status()
        .expect("cp");
    assert!(copied.success());
    (seed, work, head)
}

/// `(device, inode)` of every pack file under `objects/pack`, by name.
fn pack_inodes(objects: &Path) -> Vec<(String, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = std::fs::read_dir(objects.join("pack"))
        .expect("pack folder")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.dev(), m.ino()),
            )
        })
        .collect();
    out.sort();
    out
}

fn base_has(work: &Path, oid: &str) -> bool {
    Command::new("git")
        .arg("--git-dir")
        .arg(super::base::repo(work))
        .args(["cat-file", "-e", &format!("{oid}^{{commit}}")])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .expect("git")
        .success()
}

#[tokio::test]
async fn the_base_reads_the_seed_links_its_objects_and_never_reads_the_sessions_copy_issue_18() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (seed, work, head) = seeded(tmp.path());
    // What the session's user could do to its copy before the gate opens:
    // the base must take none of it, neither objects nor refs nor config.
    let clone_git = work.join("home/repo/.git");
    for e in std::fs::read_dir(clone_git.join("objects/pack")).expect("packs") {
        let p = e.expect("entry").path();
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, b"planted").expect("write");
    }
    let planted = "1".repeat(40);
    std::fs::write(clone_git.join("HEAD"), format!("{planted}\n")).expect("write");
    std::fs::write(
        clone_git.join("packed-refs"),
        format!("{planted} refs/tags/planted\n"),
    )
    .expect("write");
    std::fs::write(
        clone_git.join("config"),
        "[core]\n\trepositoryformatversion = 1\n[extensions]\n\tobjectformat = sha256\n",
    )
    .expect("write");
    let home = tmp.path().join("git-home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let seed_git = seed.join(".git");
    record_seeded(&work, &home, seed_git.clone()).await;
    let base_objects = super::base::repo(&work).join("objects");
    let seed_objects = seed_git.join("objects");
    assert_eq!(pack_inodes(&base_objects), pack_inodes(&seed_objects));
    assert!(!pack_inodes(&base_objects).is_empty());
    assert!(base_has(&work, &head), "the base holds the clone's HEAD");
    let base = super::base::read(&work).expect("base.json");
    assert_eq!(base.head.as_deref(), Some(head.as_str()), "{base:?}");
    assert!(base.unsupported.is_none(), "{base:?}");
    assert!(
        base.refs.iter().all(|r| !r.name.contains("planted")),
        "{base:?}"
    );
}

/// Record `work`'s base from the seed whose git folder is `git_dir`, held
/// by a stand-in for its lock, and check the hold was let go.
async fn record_seeded(work: &Path, home: &Path, git_dir: PathBuf) {
    let held = std::sync::Arc::new(());
    let seed = Seed {
        git_dir,
        hold: Box::new(std::sync::Arc::clone(&held)),
    };
    record_base(work, home, plan(1 << 20), &Default::default(), Some(seed))
        .await
        .expect("base recorded");
    assert_eq!(
        std::sync::Arc::strong_count(&held),
        1,
        "the seed was let go"
    );
}

#[tokio::test]
async fn without_a_usable_seed_the_base_reads_and_copies_the_clone_issue_18() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (seed, work, head) = seeded(tmp.path());
    let home = tmp.path().join("git-home");
    std::fs::create_dir_all(&home).expect("mkdir");
    // A seed that cannot be opened: everything comes from the clone.
    record_seeded(&work, &home, seed.join(".git-gone")).await;
    let base_objects = super::base::repo(&work).join("objects");
    let clone_objects = work.join("home/repo/.git/objects");
    let (ours, theirs) = (pack_inodes(&base_objects), pack_inodes(&clone_objects));
    assert_eq!(
        ours.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        theirs.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(
        ours.iter().zip(&theirs).all(|(a, b)| a.1 != b.1),
        "copies, not links"
    );
    assert!(base_has(&work, &head));
    let base = super::base::read(&work).expect("base.json");
    assert_eq!(base.head.as_deref(), Some(head.as_str()), "{base:?}");
}
