//! Which image a session's container ran, known at its start instead of
//! asked with `container inspect` at its end (issue 12 item 3; `known.rs`
//! keeps the answers).
//!
//! `podman run IMAGE` resolves the name in local storage when it creates
//! the container. The id and digest that name resolves to are asked once
//! per image (`podman image inspect`) and cached together with a stamp of
//! the storage's image list (`<graphroot>/<driver>-images/images.json`,
//! which containers/storage rewrites, as a new file, on every change of a
//! tag, pull, build or removal; a `run` leaves it alone). A cached answer is
//! used for a session only when the stamp was the same before and after
//! its `podman run`: no tag moved in between, so the name resolved to the
//! cached id. Anything else (no stamp, a changed stamp) leaves the image
//! unknown, and the end of the session asks `container inspect` as before.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Podman, PodmanError};
use crate::runtime::ImageIdentity;

/// Identity of one version of the storage's image list: a rewrite makes a
/// new file (new inode) with a new modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagesStamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// The image list of a containers/storage graph root, if it is there.
pub fn images_file(graph_root: &Path, driver: &str) -> Option<PathBuf> {
    let f = graph_root
        .join(format!("{driver}-images"))
        .join("images.json");
    f.is_file().then_some(f)
}

/// The stamp of `file` now; `None` when it cannot be read.
pub fn stamp_of(file: &Path) -> Option<ImagesStamp> {
    let m = std::fs::metadata(file).ok()?;
    Some(ImagesStamp {
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageEntry {
    id: String,
    #[serde(default)]
    digest: Option<String>,
}

pub fn parse_image_inspect(out: &str) -> Result<ImageIdentity, PodmanError> {
    let bad = |reason: String| PodmanError::Parse {
        verb: "image inspect".into(),
        reason,
    };
    let mut entries: Vec<ImageEntry> = serde_json::from_str(out).map_err(|e| bad(e.to_string()))?;
    let e = entries.pop().ok_or_else(|| bad("empty list".into()))?;
    Ok(ImageIdentity {
        id: e.id,
        digest: e.digest.filter(|d| !d.is_empty()),
    })
}

impl Podman {
    /// The id and digest `name` resolves to in local storage now.
    pub async fn image_inspect(&self, name: &str) -> Result<ImageIdentity, PodmanError> {
        let args = [
            "image".into(),
            "inspect".into(),
            "--format=json".into(),
            name.into(),
        ];
        let out = self.call(&args, self.timeout).await?;
        parse_image_inspect(&out)
    }

    /// The stamp of the storage's image list; `None` when it is not known
    /// (remote Podman, another storage layout): then no cached image
    /// answer is trusted.
    pub fn images_stamp(&self) -> Option<ImagesStamp> {
        self.images_file.get().and_then(|f| stamp_of(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_inspect_output_of_podman_4_3() {
        let out = r#"[{"Id":"e375","Digest":"sha256:30c0","RepoTags":["localhost/x:1"]}]"#;
        let i = parse_image_inspect(out).expect("parses");
        assert_eq!(i.id, "e375");
        assert_eq!(i.digest.as_deref(), Some("sha256:30c0"));
        assert!(parse_image_inspect("[]").is_err());
    }

    #[test]
    fn a_rewritten_image_list_has_a_new_stamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("images.json");
        std::fs::write(&f, "[]").expect("write");
        let a = stamp_of(&f).expect("stamp");
        assert_eq!(stamp_of(&f), Some(a));
        // What containers/storage does: write a new file, rename it over.
        let tmp = dir.path().join(".tmp-images.json");
        std::fs::write(&tmp, "[]").expect("write");
        std::fs::rename(&tmp, &f).expect("rename");
        assert_ne!(stamp_of(&f), Some(a));
        assert_eq!(stamp_of(&dir.path().join("gone")), None);
    }
}
