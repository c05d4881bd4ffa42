//! The image a session ran, learned at its start so that its end need not
//! ask Podman (issue 12 item 3). `runtime::podman::images` says why a cached
//! answer is exact: it is used only when the storage's image list did not
//! change from before `podman run` until after it.

use std::collections::BTreeMap;

use super::{Shared, lock};
use crate::runtime::podman::{ImageInfo, ImagesStamp};

/// Image answers per image name, and the image each running session ran.
#[derive(Debug, Default)]
pub struct ImageCache {
    /// What `podman image inspect NAME` said, and the image list's stamp
    /// at the time (the answer holds while the stamp does).
    by_name: BTreeMap<String, (ImagesStamp, ImageInfo)>,
    /// Per request whose container runs: the image it was created from.
    /// In memory only: after a restart the end asks `container inspect`.
    ran: BTreeMap<String, ImageInfo>,
}

/// What `image` resolves to now, with the stamp that answer holds for:
/// from the cache when the stamp is unchanged, else asked (concurrently
/// with `podman run`, so off the session's critical path). `None` when
/// unknown: no stamp, Podman failed, or the list changed while asking.
pub async fn learn(sh: &Shared, image: &str) -> Option<(ImagesStamp, ImageInfo)> {
    let before = sh.podman.images_stamp()?;
    if let Some((stamp, info)) = lock(&sh.images).by_name.get(image)
        && *stamp == before
    {
        return Some((before, info.clone()));
    }
    let info = match sh.podman.image_inspect(image).await {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(image, error = %e, "cannot learn the image id at start; the end asks");
            return None;
        }
    };
    let after = sh.podman.images_stamp()?;
    if after != before {
        return None;
    }
    lock(&sh.images)
        .by_name
        .insert(image.to_string(), (before, info.clone()));
    Some((before, info))
}

/// After `podman run` of `request` succeeded: `learned` is the image its
/// container runs if the image list is still the one it was learned from
/// (no tag can have moved while `podman run` resolved the name). A session
/// with a memory limit records nothing: whether the kernel killed one of
/// its processes for memory (the status says so) only Podman knows, so its
/// end asks `container inspect`.
pub fn ran(
    sh: &Shared,
    request: &str,
    learned: Option<(ImagesStamp, ImageInfo)>,
    memory_limit: bool,
) {
    let Some((stamp, info)) = learned else { return };
    if memory_limit {
        return;
    }
    if sh.podman.images_stamp() == Some(stamp) {
        lock(&sh.images).ran.insert(request.to_string(), info);
    }
}

/// The image `request`'s container was created from, if known.
pub fn of(sh: &Shared, request: &str) -> Option<ImageInfo> {
    lock(&sh.images).ran.get(request).cloned()
}

/// The session of `request` is over: forget its image.
pub fn forget(sh: &Shared, request: &str) {
    lock(&sh.images).ran.remove(request);
}
