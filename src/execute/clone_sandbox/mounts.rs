//! What the clone sandbox must not show, worked out from
//! `/proc/self/mountinfo` (pure: text in, paths out).
//!
//! A folder is reachable under more than its own path when its filesystem
//! is mounted again elsewhere (a bind mount of the state dir, the same disk
//! mounted twice), and every procfs mount leads into other processes' views
//! of the filesystem (`/proc/<daemon pid>/root/<state>` walks the daemon's
//! own mount namespace). So every view of a hidden folder and every procfs
//! mount counts as hidden: a repository inside one is refused, and one
//! inside a folder the sandbox shows is covered there.

use std::path::{Component, Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// The folder of that filesystem mounted here (`/` for a whole one).
    pub root: PathBuf,
    /// Where it is mounted.
    pub point: PathBuf,
    pub fstype: String,
}

/// The mounts `mountinfo` lists, in its order (later mounts lie on top of
/// earlier ones at the same point). Lines that do not parse are skipped.
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let f: Vec<&str> = before.split(' ').collect();
            let fstype = after.split(' ').next()?;
            Some(Mount {
                dev: (*f.get(2)?).to_string(),
                root: PathBuf::from(unescape(f.get(3)?)),
                point: PathBuf::from(unescape(f.get(4)?)),
                fstype: unescape(fstype),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every path under which the folder `hidden` (absolute, symlinks resolved)
/// can be reached: itself, and wherever its filesystem shows it again.
/// A mount showing only a part of it counts whole.
pub fn views(mounts: &[Mount], hidden: &Path) -> Vec<PathBuf> {
    let mut out = vec![hidden.to_path_buf()];
    // The mount `hidden` lies on: the deepest mount point above it, the
    // last one mounted there (`max_by_key` keeps the last of equals).
    let Some(home) = mounts
        .iter()
        .filter(|m| hidden.starts_with(&m.point))
        .max_by_key(|m| depth(&m.point))
    else {
        return out;
    };
    let Ok(below) = hidden.strip_prefix(&home.point) else {
        return out;
    };
    // Where `hidden` is within its filesystem.
    let inner = home.root.join(below);
    for m in mounts.iter().filter(|m| m.dev == home.dev) {
        if let Ok(rest) = inner.strip_prefix(&m.root) {
            out.push(m.point.join(rest));
        } else if m.root.starts_with(&inner) {
            out.push(m.point.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every procfs mount point.
pub fn procfs(mounts: &[Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fstype == "proc")
        .map(|m| m.point.clone())
        .collect()
}

/// Every path under which something of `hidden` (absolute, symlinks
/// resolved) shows, outermost only: each view of each hidden folder, and
/// every procfs mount (the view holds no procfs at all).
pub fn hidden_views(mounts: &[Mount], hidden: &[PathBuf]) -> Vec<PathBuf> {
    outermost(
        hidden
            .iter()
            .flat_map(|h| views(mounts, h))
            .chain(procfs(mounts))
            .collect(),
    )
}

/// The hidden view `p` is or lies inside, if any.
pub fn holding<'a>(hidden: &'a [PathBuf], p: &Path) -> Option<&'a Path> {
    hidden
        .iter()
        .find(|h| p.starts_with(h))
        .map(PathBuf::as_path)
}

/// The hidden views strictly inside `shown`: what a bind of `shown` would
/// show unless covered.
pub fn inside<'a>(hidden: &'a [PathBuf], shown: &'a Path) -> impl Iterator<Item = &'a Path> {
    hidden
        .iter()
        .filter(move |h| h.starts_with(shown) && h.as_path() != shown)
        .map(PathBuf::as_path)
}

/// `paths` without duplicates and without any path inside another: a cover
/// over the outer one hides the inner one already.
pub fn outermost(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort_by_key(|p| depth(p));
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 254:0 /var/lib/agentd /srv/alias rw,relatime - ext4 /dev/vda rw
31 27 254:0 /var/lib/agentd/cache /mnt/cache\\040copy rw - ext4 /dev/vda rw
32 27 254:0 /home /home rw - ext4 /dev/vda rw
33 27 0:40 / /tmp rw - tmpfs tmpfs rw
34 27 0:21 / /run/other/proc rw - proc proc rw
35 27 254:16 / /data rw - ext4 /dev/vdb rw
36 27 254:16 / /mnt/data2 rw - ext4 /dev/vdb rw
";

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn parses_mountinfo_and_unescapes_paths_issue_17() {
        let m = parse(INFO);
        assert_eq!(m.len(), 9);
        assert_eq!(m[3].point, p("/mnt/cache copy"));
        assert_eq!(m[3].root, p("/var/lib/agentd/cache"));
        assert_eq!(m[3].dev, "254:0");
        assert_eq!(m[0].fstype, "proc");
        assert_eq!(unescape(r"a\134b\011c\012"), "a\\b\tc\n");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert!(parse("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn a_private_folder_is_covered_wherever_its_filesystem_shows_it_issue_17() {
        let m = parse(INFO);
        assert_eq!(
            views(&m, Path::new("/var/lib/agentd")),
            vec![p("/mnt/cache copy"), p("/srv/alias"), p("/var/lib/agentd"),]
        );
        // The same disk mounted twice.
        assert_eq!(
            views(&m, Path::new("/data/agentd/state")),
            vec![p("/data/agentd/state"), p("/mnt/data2/agentd/state")]
        );
        // A folder on a filesystem of its own, shown nowhere else.
        assert_eq!(views(&m, Path::new("/tmp/x")), vec![p("/tmp/x")]);
        // /home is its own bind of the root filesystem's /home: not an alias
        // of /var/lib/agentd.
        assert!(!views(&m, Path::new("/var/lib/agentd")).contains(&p("/home")));
    }

    #[test]
    fn what_is_hidden_is_found_around_and_inside_a_shown_folder_issue_17() {
        let m = parse(INFO);
        let hidden = hidden_views(&m, &[p("/var/lib/agentd/audit"), p("/var/lib/agentd")]);
        let mut sorted = hidden.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                p("/mnt/cache copy"),
                p("/proc"),
                p("/run/other/proc"),
                p("/srv/alias"),
                p("/var/lib/agentd"),
            ]
        );
        assert_eq!(
            holding(&hidden, Path::new("/srv/alias/cache/git/k.git")),
            Some(Path::new("/srv/alias"))
        );
        assert_eq!(
            holding(&hidden, Path::new("/var/lib/agentd")),
            Some(Path::new("/var/lib/agentd"))
        );
        assert_eq!(holding(&hidden, Path::new("/var/lib/agentdx")), None);
        assert_eq!(holding(&hidden, Path::new("/srv/forks/x")), None);
        let within: Vec<&Path> = inside(&hidden, Path::new("/var")).collect();
        assert_eq!(within, [Path::new("/var/lib/agentd")]);
        let within: Vec<&Path> = inside(&hidden, Path::new("/run")).collect();
        assert_eq!(within, [Path::new("/run/other/proc")]);
        assert_eq!(inside(&hidden, Path::new("/var/lib/agentd")).count(), 0);
        assert_eq!(inside(&hidden, Path::new("/usr")).count(), 0);
    }

    #[test]
    fn every_procfs_mount_is_covered_and_nested_covers_collapse_issue_17() {
        let m = parse(INFO);
        assert_eq!(procfs(&m), vec![p("/proc"), p("/run/other/proc")]);
        assert_eq!(
            outermost(vec![
                p("/var/lib/agentd/audit"),
                p("/var/lib/agentd"),
                p("/proc"),
                p("/var/lib/agentd"),
                p("/var/lib/agentdx"),
            ]),
            vec![p("/proc"), p("/var/lib/agentd"), p("/var/lib/agentdx")]
        );
    }
}
