//! Seed clones: the state of a git folder, the copy, the index.

use super::*;
use std::os::unix::fs::{PermissionsExt, symlink};

/// A work tree with a git folder as git lays one out.
fn repo(root: &Path) -> PathBuf {
    let r = root.join("app");
    for d in [
        ".git/refs/heads",
        ".git/refs/tags",
        ".git/objects/pack",
        ".git/objects/info",
        ".git/info",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(r.join(".git/HEAD"), "ref: refs/heads/main\n").expect("HEAD");
    std::fs::write(r.join(".git/config"), "[core]\n").expect("config");
    std::fs::write(r.join(".git/refs/heads/main"), "1111\n").expect("ref");
    std::fs::write(r.join(".git/objects/pack/pack-1.pack"), "p").expect("pack");
    std::fs::write(r.join("README"), "hi\n").expect("work tree");
    r
}

/// What git does to a file: a new one renamed over it.
fn rewrite(p: &Path, body: &str) {
    let tmp = p.with_extension("lock");
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, p).expect("rename");
}

#[test]
fn the_state_changes_with_every_write_to_the_git_folder_that_a_clone_reads_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = repo(dir.path());
    let mut seen = vec![state(&r).expect("a plain repository has a state").digest];
    let mut changed = |what: &str| {
        let now = state(&r).expect("still a state").digest;
        assert!(!seen.contains(&now), "{what} left the state as it was");
        seen.push(now);
    };
    rewrite(&r.join(".git/refs/heads/main"), "2222\n");
    changed("a branch moved");
    std::fs::create_dir_all(r.join(".git/refs/heads/team")).expect("mkdir");
    std::fs::write(r.join(".git/refs/heads/team/x"), "3333\n").expect("ref");
    changed("a nested branch made");
    rewrite(&r.join(".git/packed-refs"), "4444 refs/tags/v1\n");
    changed("packed refs written");
    std::fs::write(r.join(".git/objects/pack/pack-2.pack"), "q").expect("pack");
    changed("a pack added");
    std::fs::create_dir(r.join(".git/objects/ab")).expect("fanout");
    changed("a loose object folder made");
    std::fs::write(r.join(".git/objects/ab/cdef"), "o").expect("loose");
    changed("a loose object written");
    rewrite(
        &r.join(".git/config"),
        "[uploadpack]\n\thideRefs = refs/tags\n",
    );
    changed("the configuration changed");
    rewrite(&r.join(".git/HEAD"), "ref: refs/heads/team/x\n");
    changed("HEAD moved");
    std::fs::remove_file(r.join(".git/refs/heads/team/x")).expect("rm");
    changed("a branch deleted");
}

#[test]
fn the_work_tree_is_not_part_of_the_state_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = repo(dir.path());
    let before = state(&r);
    std::fs::write(r.join("README"), "edited\n").expect("edit");
    std::fs::create_dir(r.join("src")).expect("mkdir");
    std::fs::write(r.join("src/new.rs"), "fn main() {}\n").expect("new file");
    assert!(before.is_some());
    assert_eq!(before, state(&r));
}

#[test]
fn a_bare_repository_has_a_state_too_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = repo(dir.path());
    let bare = r.join(".git");
    let before = state(&bare).expect("bare");
    rewrite(&bare.join("refs/heads/main"), "5555\n");
    assert_ne!(Some(before), state(&bare));
}

#[test]
fn a_state_changed_within_the_settle_time_is_not_kept_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = repo(dir.path());
    let now = SystemTime::now();
    let s = state(&r).expect("state");
    assert!(!s.settled(now), "just written");
    assert!(!s.settled(now + SETTLE / 2));
    assert!(s.settled(now + SETTLE + Duration::from_millis(10)));
}

#[test]
fn links_linked_work_trees_odd_paths_and_huge_folders_get_no_seed_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let r = repo(d);
    assert!(state(&r).is_some());
    // A link among the refs: what it points at could change unseen.
    symlink(d.join("elsewhere"), r.join(".git/refs/heads/link")).expect("link");
    assert_eq!(state(&r), None, "a link in refs/");
    std::fs::remove_file(r.join(".git/refs/heads/link")).expect("rm");
    symlink("pack", r.join(".git/objects/linked")).expect("link");
    assert_eq!(state(&r), None, "a link in objects/");
    std::fs::remove_file(r.join(".git/objects/linked")).expect("rm");
    assert!(state(&r).is_some());
    // The source reached through a link, or with `..`, or relative.
    symlink(&r, d.join("via-link")).expect("link");
    assert_eq!(state(&d.join("via-link")), None);
    assert_eq!(state(&r.join("../app")), None);
    assert_eq!(state(Path::new("app")), None);
    // A `.git` file (a linked work tree or submodule), and a git
    // folder of a linked work tree.
    let wt = d.join("wt");
    std::fs::create_dir(&wt).expect("mkdir");
    std::fs::write(wt.join(".git"), "gitdir: /elsewhere\n").expect("gitfile");
    assert_eq!(state(&wt), None);
    std::fs::write(r.join(".git/commondir"), "../..\n").expect("commondir");
    assert_eq!(state(&r), None);
    std::fs::remove_file(r.join(".git/commondir")).expect("rm");
    // More entries than are read.
    let many = r.join(".git/refs/tags");
    for i in 0..=MAX_ENTRIES {
        std::fs::write(many.join(format!("t{i}")), "").expect("tag");
    }
    assert_eq!(state(&r), None);
}

#[test]
fn a_copy_has_the_folders_files_modes_and_links_of_the_seed_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (from, to) = (dir.path().join("seed"), dir.path().join("dest"));
    std::fs::create_dir_all(from.join(".git/objects/pack")).expect("mkdir");
    std::fs::write(from.join(".git/objects/pack/p.pack"), "pack").expect("pack");
    std::fs::set_permissions(
        from.join(".git/objects/pack/p.pack"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod");
    std::fs::write(from.join("run.sh"), "#!/bin/sh\n").expect("script");
    std::fs::set_permissions(from.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    symlink("/etc/passwd", from.join("link")).expect("link");
    std::fs::create_dir(&to).expect("dest");
    copy_tree(&from, &to).expect("copy");
    let mode = |p: &str| {
        std::os::unix::fs::MetadataExt::mode(&std::fs::symlink_metadata(to.join(p)).expect(p))
            & 0o777
    };
    assert_eq!(
        std::fs::read_to_string(to.join(".git/objects/pack/p.pack")).expect("pack"),
        "pack"
    );
    assert_eq!(mode(".git/objects/pack/p.pack"), 0o444);
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(
        std::fs::read_link(to.join("link")).expect("a link"),
        Path::new("/etc/passwd")
    );
}

#[test]
fn a_seed_is_found_only_in_its_state_and_the_least_recently_used_goes_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("seeds");
    std::fs::create_dir_all(&root).expect("mkdir");
    let clone = |name: &str| {
        let c = root.join(format!("{name}.clone"));
        std::fs::create_dir_all(&c).expect("mkdir");
        std::fs::write(c.join("README"), name).expect("file");
        c
    };
    let seeds = Seeds::default();
    let a = Seeds::key(Path::new("/srv/a.git"));
    assert_ne!(
        a,
        Seeds::key(Path::new("/srv/a.git/")),
        "each spelling its own"
    );
    let first = clone("a1");
    seeds.keep(&root, &a, "s1".into(), &first).expect("keep");
    assert!(!first.exists(), "the clone became the seed");
    let dir_a = seeds.get(&a, "s1").expect("kept");
    assert_eq!(dir_a, Seeds::folder(&root, &a));
    assert_eq!(
        std::fs::read_to_string(dir_a.join("README")).expect("file"),
        "a1"
    );
    assert_eq!(seeds.get(&a, "s2"), None, "another state");
    assert_eq!(seeds.get("other", "s1"), None, "another repository");
    seeds
        .keep(&root, &a, "s2".into(), &clone("a2"))
        .expect("replace");
    assert_eq!(seeds.get(&a, "s1"), None);
    let dir_a = seeds.get(&a, "s2").expect("replaced");
    assert_eq!(
        std::fs::read_to_string(dir_a.join("README")).expect("file"),
        "a2"
    );
    assert!(seeds.over_cap().is_empty());
    for i in 0..MAX_SEEDS {
        seeds
            .keep(
                &root,
                &format!("r{i}"),
                "s".into(),
                &clone(&format!("r{i}")),
            )
            .expect("keep");
    }
    // Past the cap: the least recently used first, removed by whoever
    // holds its lock.
    assert_eq!(seeds.over_cap(), vec![a.clone()]);
    seeds.evict(&a).expect("evict");
    assert_eq!(seeds.get(&a, "s2"), None);
    assert!(!dir_a.exists(), "its folder went with it");
    assert!(seeds.over_cap().is_empty());
    assert_eq!(std::fs::read_dir(&root).expect("root").count(), MAX_SEEDS);
    seeds.forget("r0");
    assert_eq!(seeds.get("r0", "s"), None);
    clear(&root).expect("clear");
    assert!(!root.exists());
}

#[test]
fn a_copy_never_writes_through_a_name_planted_in_the_destination_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (from, to) = (dir.path().join("seed"), dir.path().join("dest"));
    std::fs::create_dir_all(from.join(".git")).expect("mkdir");
    std::fs::write(from.join(".git/config"), "[core]\n").expect("file");
    std::fs::write(from.join("README"), "seed").expect("file");
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    std::fs::write(victim.join("config"), "untouched").expect("file");
    // What a container could plant in its folder before the copy: a link
    // where a folder of the seed goes, one where a file goes.
    for (plant, at) in [(".git", victim.clone()), ("README", victim.join("config"))] {
        std::fs::create_dir_all(&to).expect("mkdir");
        symlink(&at, to.join(plant)).expect("link");
        assert!(copy_tree(&from, &to).is_err(), "{plant}");
        assert_eq!(
            std::fs::read_to_string(victim.join("config")).expect("victim"),
            "untouched",
            "{plant}"
        );
        empty(&to).expect("empty");
        assert_eq!(std::fs::read_dir(&to).expect("ls").count(), 0);
        assert!(victim.join("config").exists(), "empty() follows no link");
    }
    // The destination itself a link: refused.
    std::fs::remove_dir(&to).expect("rmdir");
    symlink(&victim, &to).expect("link");
    assert!(copy_tree(&from, &to).is_err());
    assert!(empty(&to).is_err());
    assert!(victim.join("config").exists());
}

#[test]
fn a_configuration_that_includes_other_files_or_an_ambiguous_git_folder_gets_no_seed_issue_18() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = repo(dir.path());
    assert!(state(&r).is_some());
    rewrite(
        &r.join(".git/config"),
        "[core]\n[Include]\n\tpath = ../hidden-refs\n",
    );
    assert_eq!(state(&r), None, "include.path");
    rewrite(
        &r.join(".git/config"),
        "[includeIf \"onbranch:main\"]\n\tpath = x\n",
    );
    assert_eq!(state(&r), None, "includeIf");
    rewrite(&r.join(".git/config"), "[core]\n");
    assert!(state(&r).is_some());
    // A configuration that is not a plain file.
    std::fs::remove_file(r.join(".git/config")).expect("rm");
    nix::unistd::mkfifo(&r.join(".git/config"), Mode::S_IRWXU).expect("mkfifo");
    assert_eq!(state(&r), None, "a FIFO is never opened for reading");
    std::fs::remove_file(r.join(".git/config")).expect("rm");
    std::fs::write(r.join(".git/config"), "[core]\n").expect("config");
    // The top folder looks like a repository too: git may serve either.
    std::fs::write(r.join("HEAD"), "ref: refs/heads/main\n").expect("HEAD");
    assert_eq!(state(&r), None);
    std::fs::remove_file(r.join("HEAD")).expect("rm");
    // Another folder swapped in at the same path is another repository.
    let before = state(&r).expect("state");
    let moved = dir.path().join("moved");
    std::fs::rename(&r, &moved).expect("mv");
    copy_tree_for_test(&moved, &r);
    assert_ne!(state(&r), Some(before));
}

/// A plain recursive copy (`cp -a` without the process).
fn copy_tree_for_test(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    copy_tree(from, to).expect("copy");
}
