//! Issue 18, seed clones: a local repository is cloned through git once per
//! state of its git folder; the sessions after get a copy. A copy must be
//! exactly what a clone would give: the new state after any change to the
//! repository, nothing of another session's, nothing of an earlier run's.

use std::path::Path;

use crate::util::{World, git, require_podman};

/// One session of profile `p`: what it printed.
fn session(w: &World, id: &str) -> String {
    w.request(id, "profile = \"p\"\n");
    let s = w.wait_done(id);
    assert_eq!(s["outcome"], "success", "{id}: {s}");
    w.console(id)
}

/// Wait out the settle time of the repository's last change: only then is
/// a clone of it kept (`seed::SETTLE`, one-second timestamps).
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(2_200));
}

fn copies(w: &World) -> usize {
    w.log().matches("copied the seed clone").count()
}

#[test]
fn a_changed_repository_clones_its_new_state_an_unchanged_one_a_clean_copy_issue_18() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // Prints what the clone holds, then changes it: a commit, a branch, a
    // file in .git, an edit. None of it may reach the next session.
    w.sh_profile(
        "p",
        "git log --format='log %s' --branches; git for-each-ref --format='ref %(refname)'; \
         ls .git/leftover 2>/dev/null && echo 'LEFTOVER'; git status --porcelain | sed 's/^/dirty /'; \
         ls -A .git | grep -qx gitconfig && echo 'GITCONFIG IN THE CLONE'; \
         git -c user.name=a -c user.email=a@a commit -q --allow-empty -m 'agent commit'; \
         git branch agent-branch; echo x > .git/leftover; echo edit >> README.md",
        "",
    );
    w.start_daemon();
    settle();
    let first = session(&w, "s1");
    assert!(first.contains("log first commit"), "{first}");
    assert!(
        !first.contains("GITCONFIG"),
        "the sandbox's config was copied:\n{first}"
    );
    assert_eq!(copies(&w), 0, "the first session clones");
    let clean = |out: &str, id: &str| {
        for junk in ["agent commit", "agent-branch", "LEFTOVER", "dirty"] {
            assert!(
                !out.contains(junk),
                "{id} saw `{junk}` of an earlier session:\n{out}"
            );
        }
    };
    let second = session(&w, "s2");
    assert_eq!(copies(&w), 1, "the second one copies the seed");
    assert_eq!(second, first, "a copy shows what the clone showed");
    clean(&second, "s2");

    // The repository moves on: a new commit and a new branch pushed to it.
    let bare = w.repo_url.trim_start_matches("file://").to_string();
    let work = w.path().join("pusher");
    git(
        w.path(),
        &["clone", "-q", &bare, work.to_str().expect("utf8")],
    );
    git(
        &work,
        &["commit", "-q", "--allow-empty", "-m", "second commit"],
    );
    git(
        &work,
        &["push", "-q", "origin", "HEAD:main", "HEAD:refs/heads/next"],
    );
    settle();
    let third = session(&w, "s3");
    assert!(third.contains("log second commit"), "{third}");
    assert!(third.contains("ref refs/remotes/origin/next"), "{third}");
    assert_eq!(copies(&w), 1, "a changed repository is cloned again");
    clean(&third, "s3");
    let fourth = session(&w, "s4");
    assert_eq!(copies(&w), 2, "and its new state copied after");
    assert_eq!(fourth, third);

    // A tag made in the repository itself (a ref, no object, not even a
    // push's quarantine folder) is a change too.
    git(Path::new(&bare), &["tag", "v1", "main"]);
    let fifth = session(&w, "s5");
    assert!(fifth.contains("ref refs/tags/v1"), "{fifth}");
    assert_eq!(copies(&w), 2);
    // Cloned within the settle time of that change: not kept, so the next
    // session clones too.
    let again = session(&w, "s5b");
    assert_eq!(again, fifth);
    assert_eq!(copies(&w), 2, "a state changed moments before is not kept");

    // A restarted daemon keeps no seed of its earlier run.
    let seeds = w.path().join("state/cache/seeds");
    assert!(seeds.is_dir(), "seeds are kept under {}", seeds.display());
    std::fs::write(seeds.join("stale-marker"), "x").expect("marker");
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait_daemon(std::time::Duration::from_secs(30)).is_some());
    w.start_daemon();
    let sixth = session(&w, "s6");
    assert_eq!(sixth, fifth);
    assert!(
        !seeds.join("stale-marker").exists(),
        "the earlier run's seeds are gone"
    );
    assert_eq!(copies(&w), 2, "the first session after a restart clones");
}
