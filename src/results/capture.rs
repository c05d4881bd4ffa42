//! What the agent changed, captured on the host at the end of a session
//! (issue 20), into the record's `agentd/changes.bundle`,
//! `agentd/commits.patch` and `agentd/worktree.patch`, and the `changes`
//! summary.
//!
//! The clone is hostile: its refs are read as bytes and its new object
//! files copied by descriptor (`clone_files`) into `src.git`, a repository
//! of the daemon's that borrows the base objects; the quarantine
//! repository (`base::repo`) fetches from it with `transfer.fsckObjects`,
//! so only objects that hash to their names, parse, and connect to the
//! base get in. The work tree is read by agentd itself (`worktree`) and
//! imported as a commit. Every git run is isolated (`git`) and the whole
//! capture has a deadline; what is over `results_max_bytes` (the bundle
//! and both patches together, placed in that order) is left out and named
//! in `changes.cut`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::base;
use super::clone_files;
use super::git::{EMPTY_TREE, Git};
use super::model::{Base, Changes, RefTip};
use super::refs;
use super::stream::{self, Tracked};
use super::worktree;

/// How long a capture may take in all.
pub const CAPTURE_TIME: Duration = Duration::from_secs(300);

/// The agent's new object files are copied up to this many times the
/// results budget (loose objects compress less than a bundle's pack).
const OBJECTS_FACTOR: u64 = 4;

/// Files of the capture in the results folder, made anew by each attempt.
const SCRATCH: [&str; 5] = [
    "src.git",
    "worktree.fi",
    "changes.bundle",
    "commits.patch",
    "worktree.patch",
];

/// What a capture produced, before it is placed into the record.
pub struct Produced {
    pub changes: Changes,
    /// `(file in the results folder, name in the record)`.
    pub files: Vec<(PathBuf, &'static str)>,
    /// HEAD has commits the base did not have (what a push sends).
    pub head_is_new: bool,
}

fn cut_err(ch: &mut Changes, what: &str, e: impl std::fmt::Display) {
    ch.cut(format!("{what}: {e}"));
}

/// Capture the session's changes from `<work_root>/home/repo`.
pub async fn produce(work_root: &Path, git_home: &Path, base: &Base) -> Produced {
    let dir = base::dir(work_root);
    let repo = base::repo(work_root);
    let git = Git::new(git_home, CAPTURE_TIME);
    let max = base.plan.max_bytes;
    let mut ch = Changes {
        base: base.head.clone(),
        head: base.head.clone(),
        ..Changes::default()
    };
    let mut out = Produced {
        changes: Changes::default(),
        files: Vec::new(),
        head_is_new: false,
    };
    for s in SCRATCH {
        let _ = crate::fdtree::remove_tree(&dir.join(s));
    }

    // The clone's refs, by descriptor.
    let work = work_root.to_path_buf();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let clone = clone_files::open_clone(&work)?;
        let Some(dotgit) = &clone.dotgit else {
            return Ok(None);
        };
        let r = clone_files::read_refs(dotgit, "refs/heads/")?;
        let exclude = match crate::fdtree::open_dir_at(dotgit, c"info") {
            Ok(info) => clone_files::read_small(&info, c"exclude", 1 << 20)?,
            Err(_) => None,
        };
        Ok(Some((r, exclude)))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    let (clone_refs, exclude) = match read {
        Ok(Some(r)) => r,
        Ok(None) => {
            ch.cut("the clone has no .git folder (removed, or replaced by a file or link): commits not captured");
            (clone_files::Refs::default(), None)
        }
        Err(e) => {
            cut_err(&mut ch, "the clone's refs could not be read", e);
            (clone_files::Refs::default(), None)
        }
    };
    for n in &clone_refs.notes {
        ch.cut(n.clone());
    }
    let (head_oid, _) = refs::resolve_head(clone_refs.head.as_ref(), &clone_refs.refs);
    let base_tips = base.tips();
    let mut tips = refs::candidate_tips(&clone_refs.refs, head_oid.as_deref(), &base_tips);
    if tips.len() > 1000 {
        ch.cut(format!(
            "{} changed branches; only the first 1000 are captured",
            tips.len()
        ));
        tips.truncate(1000);
    }
    let mut tree_base = base.head.clone();
    if head_oid.is_some() && !tips.iter().any(|t| t.name == "HEAD") {
        // HEAD names an object of the base (perhaps another branch of it).
        tree_base = head_oid.clone();
        ch.head = head_oid.clone();
    }
    if !tips.is_empty() {
        match new_commits(&git, work_root, &repo, &tips, base, &mut ch).await {
            Ok(Some((news, tips))) => {
                out.head_is_new = tips
                    .iter()
                    .any(|t| t.name == "HEAD" && news.contains(&t.oid));
                if let Some(h) = tips.iter().find(|t| t.name == "HEAD") {
                    tree_base = Some(h.oid.clone());
                    ch.head = Some(h.oid.clone());
                }
                let names: Vec<String> = tips
                    .iter()
                    .filter(|t| news.contains(&t.oid))
                    .map(|t| t.name.clone())
                    .collect();
                if !news.is_empty() {
                    ch.refs = names.clone();
                    match bundle_and_series(&git, &repo, &dir, &names, base, max).await {
                        Ok(files) => out.files.extend(files),
                        Err(e) => cut_err(&mut ch, "the bundle could not be made", e),
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                ch.cut(format!("the agent's commits were not captured: {e}"));
            }
        }
    }

    // The work tree against HEAD's tree.
    let final_tree = match work_tree(
        &git,
        work_root,
        &repo,
        &dir,
        tree_base.as_deref(),
        base.head.as_deref(),
        exclude,
        max,
        &mut ch,
    )
    .await
    {
        Ok(Some(patch)) => {
            out.files.push((patch, "worktree.patch"));
            Some("refs/agentd/worktree".to_string())
        }
        Ok(None) => tree_base.clone(),
        Err(e) => {
            cut_err(&mut ch, "the work tree was not captured", e);
            tree_base.clone()
        }
    };
    if final_tree != base.head {
        let from = base.head.as_deref().unwrap_or(EMPTY_TREE);
        let to = final_tree.as_deref().unwrap_or(EMPTY_TREE);
        match git
            .cmd(&repo, "diff --shortstat")
            .args([
                "diff",
                "--shortstat",
                "--no-ext-diff",
                "--no-textconv",
                from,
                to,
            ])
            .capture(4096)
            .run()
            .await
        {
            Ok(d) => {
                let (f, i, del) = stream::parse_shortstat(&String::from_utf8_lossy(&d.stdout));
                (ch.files_changed, ch.insertions, ch.deletions) = (f, i, del);
            }
            Err(e) => cut_err(&mut ch, "the change summary could not be computed", e),
        }
    }
    out.changes = ch;
    out
}

/// Fetch the objects of `tips` from the clone into `repo` through
/// `src.git`, checked: the new commits (reachable from no base ref, perhaps
/// none) and the tips fetched, or `None` when no tip could be.
async fn new_commits(
    git: &Git,
    work_root: &Path,
    repo: &Path,
    tips: &[RefTip],
    base: &Base,
    ch: &mut Changes,
) -> Result<Option<(HashSet<String>, Vec<RefTip>)>, String> {
    let dir = base::dir(work_root);
    let src = dir.join("src.git");
    git.cmd(&src, "init")
        .args(["init", "--bare", "--quiet"])
        .run()
        .await
        .map_err(|e| e.to_string())?;
    let alt = format!("{}\n", repo.join("objects").display());
    std::fs::write(src.join("objects/info/alternates"), alt).map_err(|e| e.to_string())?;
    let budget = base.plan.max_bytes.saturating_mul(OBJECTS_FACTOR);
    let (work, have, dest) = (
        work_root.to_path_buf(),
        repo.join("objects"),
        src.join("objects"),
    );
    let copied = tokio::task::spawn_blocking(move || {
        let clone = clone_files::open_clone(&work)?;
        match &clone.dotgit {
            Some(d) => clone_files::copy_objects(d, &have, &dest, budget),
            None => Ok(clone_files::Copied::default()),
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("copying the clone's objects: {e}"))?;
    if let Some(why) = &copied.cut {
        ch.cut(format!("objects: {why}"));
    }
    for p in &copied.packs {
        // Indexes are rebuilt from the pack: an index of the agent's is
        // never read.
        let path = src.join("objects/pack").join(p);
        if let Err(e) = git
            .cmd(&src, "index-pack")
            .arg("index-pack")
            .arg(&path)
            .capture(4096)
            .run()
            .await
        {
            ch.cut(format!("objects: pack {p} is unusable ({e})"));
            let _ = std::fs::remove_file(&path);
        }
    }
    let lines: Vec<u8> = tips
        .iter()
        .flat_map(|t| {
            let name = if t.name == "HEAD" {
                "refs/agentd/HEAD"
            } else {
                &t.name
            };
            format!("{} {name}\n", t.oid).into_bytes()
        })
        .collect();
    base::write_new(&src.join("packed-refs"), &lines).map_err(|e| e.to_string())?;
    // One fetch for all; if git refuses it, one per tip, so a ref the
    // agent pointed at objects it does not have spoils only itself.
    let mut fetched: Vec<RefTip> = tips.to_vec();
    if let Err(e) = fetch(git, repo, &src, &refspecs(tips)).await {
        if tips.len() == 1 {
            return Err(format!(
                "the agent's objects did not pass git's checks ({e})"
            ));
        }
        fetched.clear();
        for t in tips {
            match fetch(git, repo, &src, &refspecs(std::slice::from_ref(t))).await {
                Ok(()) => fetched.push(t.clone()),
                Err(e) => ch.cut(format!(
                    "{}: the agent's objects did not pass git's checks ({e})",
                    t.name
                )),
            }
        }
        if fetched.is_empty() {
            return Ok(None);
        }
    }
    let tips = fetched.as_slice();
    let mut args: Vec<String> = vec!["rev-list".into()];
    args.extend(tips.iter().map(|t| t.oid.clone()));
    if !base.tips().is_empty() {
        args.extend(["--not".into(), "--glob=refs/agentd/base/*".into()]);
    }
    let listed = git
        .cmd(repo, "rev-list")
        .args(&args)
        .capture(64 * 1024 * 1024)
        .run()
        .await
        .map_err(|e| e.to_string())?;
    let news: HashSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| refs::is_oid(l))
        .map(str::to_string)
        .collect();
    ch.commits = news.len() as u64;
    if let Some(h) = tips.iter().find(|t| t.name == "HEAD") {
        // The bundle names HEAD: the quarantine's HEAD, detached there.
        crate::fsutil::write_atomic(&repo.join("HEAD"), format!("{}\n", h.oid).as_bytes(), 0o600)
            .map_err(|e| e.to_string())?;
    }
    Ok(Some((news, fetched)))
}

/// The refspecs that fetch `tips` from `src.git` under their own names.
fn refspecs(tips: &[RefTip]) -> Vec<String> {
    tips.iter()
        .map(|t| {
            if t.name == "HEAD" {
                "+refs/agentd/HEAD:refs/agentd/HEAD".to_string()
            } else {
                format!("+{0}:{0}", t.name)
            }
        })
        .collect()
}

/// Fetch `specs` from `src` into `repo`, every object checked.
async fn fetch(git: &Git, repo: &Path, src: &Path, specs: &[String]) -> Result<(), String> {
    git.cmd(repo, "fetch")
        .file_transport()
        .config("transfer.fsckObjects=true")
        .config("fetch.fsckObjects=true")
        .args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-auto-maintenance",
        ])
        .args(["--no-recurse-submodules", "--no-show-forced-updates"])
        .arg(src)
        .args(specs)
        .capture(64 * 1024)
        .run()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `changes.bundle` and `commits.patch` of `names` (refs with new commits).
async fn bundle_and_series(
    git: &Git,
    repo: &Path,
    dir: &Path,
    names: &[String],
    base: &Base,
    max: u64,
) -> Result<Vec<(PathBuf, &'static str)>, String> {
    let mut not: Vec<&str> = Vec::new();
    if !base.tips().is_empty() {
        not = vec!["--not", "--glob=refs/agentd/base/*"];
    }
    let bundle = dir.join("changes.bundle");
    git.cmd(repo, "bundle create")
        .args(["bundle", "create", "--quiet"])
        .arg(&bundle)
        .args(names)
        .args(&not)
        .capture(4096)
        .run()
        .await
        .map_err(|e| e.to_string())?;
    let series = dir.join("commits.patch");
    // Without a base (an empty repository) every commit is new: `--root`,
    // or format-patch would read a lone ref as `<ref>..HEAD`.
    let root: &[&str] = if not.is_empty() { &["--root"] } else { &[] };
    git.cmd(repo, "format-patch")
        .args([
            "format-patch",
            "--stdout",
            "--binary",
            "--full-index",
            "--no-ext-diff",
        ])
        .args(["--no-textconv", "--no-signature", "--topo-order"])
        .args(root)
        .args(names)
        .args(&not)
        .stdout_to(&series, max.saturating_add(1))
        .run()
        .await
        .map_err(|e| e.to_string())?;
    Ok(vec![(bundle, "changes.bundle"), (series, "commits.patch")])
}

/// Import the work tree as `refs/agentd/worktree` on top of `head` and
/// diff it: the patch's path, or `None` when nothing differs.
#[allow(clippy::too_many_arguments)]
async fn work_tree(
    git: &Git,
    work_root: &Path,
    repo: &Path,
    dir: &Path,
    head: Option<&str>,
    base_head: Option<&str>,
    exclude: Option<Vec<u8>>,
    max: u64,
    ch: &mut Changes,
) -> Result<Option<PathBuf>, String> {
    let mut tracked: BTreeMap<Vec<u8>, Tracked> = BTreeMap::new();
    let kept = (head.is_some() && head == base_head)
        .then(|| std::fs::read(base::tree_file(work_root)).ok())
        .flatten();
    if let Some(listed) = kept {
        tracked = stream::parse_ls_tree(&listed).into_iter().collect();
    } else if let Some(h) = head {
        let listed = git
            .cmd(repo, "ls-tree")
            .args(["ls-tree", "-r", "-l", "-z", "--full-tree", h])
            .capture(1 << 30)
            .run()
            .await
            .map_err(|e| e.to_string())?;
        tracked = stream::parse_ls_tree(&listed.stdout).into_iter().collect();
    }
    let stream_path = dir.join("worktree.fi");
    let limits = worktree::Limits {
        budget: max,
        max_entries: worktree::MAX_ENTRIES,
        deadline: git.deadline,
    };
    let (work, sp) = (work_root.to_path_buf(), stream_path.clone());
    let snap = tokio::task::spawn_blocking(move || {
        let mut clone = clone_files::open_clone(&work).map_err(worktree::WalkError::Io)?;
        worktree::snapshot(
            &mut clone.worktree,
            &tracked,
            exclude.as_deref(),
            &sp,
            limits,
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    for c in snap.cut.iter().chain(&snap.skipped) {
        ch.cut(c.clone());
    }
    if snap.cut_more > 0 {
        ch.truncated = true;
        ch.cut_more += snap.cut_more;
    }
    if snap.changes.is_empty() {
        return Ok(None);
    }
    let commit = stream::commit("refs/agentd/worktree", head, &snap.changes);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&stream_path)
            .map_err(|e| e.to_string())?;
        f.write_all(&commit).map_err(|e| e.to_string())?;
    }
    git.cmd(repo, "fast-import")
        .args(["fast-import", "--quiet", "--force"])
        .stdin_file(&stream_path)
        .capture(64 * 1024)
        .run()
        .await
        .map_err(|e| e.to_string())?;
    let patch = dir.join("worktree.patch");
    let done = git
        .cmd(repo, "diff")
        .args([
            "diff",
            "--binary",
            "--full-index",
            "--no-ext-diff",
            "--no-textconv",
            "--no-color",
        ])
        .arg(head.unwrap_or(EMPTY_TREE))
        .arg("refs/agentd/worktree")
        .stdout_to(&patch, max.saturating_add(1))
        .run()
        .await
        .map_err(|e| e.to_string())?;
    Ok((done.bytes > 0).then_some(patch))
}
