//! Small filesystem helpers every writer shares: atomic replace (temp file in
//! the same folder, fsync, rename, fsync the folder) so a reader or a crash
//! never sees a half-written file; and where a program is on `PATH`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replace `path` with `bytes` atomically, creating it with `mode`.
///
/// The temp file has an unpredictable name and is created with
/// `O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK`: something planted in a
/// folder others can write into (a request folder) is never written
/// through (a symlink at the temp name fails `O_EXCL`, a symlink at
/// `path` is replaced by the rename, never followed) and never blocks (a
/// FIFO at the temp name fails `O_EXCL` too). Another name is tried then.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, Durable::Yes)
}

/// [`write_atomic`] without the two `fsync`s: a reader still never sees a
/// half-written file, but a crash of the host may lose the write, or (on a
/// file system that may make the rename durable before the bytes) leave
/// the file empty. For the
/// scratch files of a session's work folder, which an OS crash makes moot
/// anyway (the session's container ends with it, and the clone beside
/// them was never synced either); on a virtual machine each `fsync` costs
/// an exit to the hypervisor.
pub fn write_atomic_scratch(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, Durable::No)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Durable {
    Yes,
    No,
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: Durable) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        // Hidden and `.tmp`-suffixed so the desired-dir scanner ignores it.
        let tmp = dir.join(format!(".{name}.{}.tmp", random_hex()));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc_flags())
            .open(&tmp);
        match opened {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        f.write_all(bytes)?;
        if durable == Durable::No {
            return fs::rename(&tmp, path);
        }
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `value` as pretty JSON ending in a newline. A value that cannot be
/// serialised is an `InvalidData` error, never empty bytes that an atomic
/// write would turn into an empty file (issue 17).
pub fn json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("cannot serialise: {e}"))
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replace `path` atomically with `value` as pretty JSON (`json_pretty`).
/// A value that cannot be serialised is an error and leaves `path` as it
/// was, so the caller's retry path (or its report) takes over.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
    mode: u32,
) -> io::Result<()> {
    write_atomic(path, &json_pretty(value)?, mode)
}

fn libc_flags() -> i32 {
    use nix::fcntl::OFlag;
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits()
}

/// 16 lower-case hex digits from the kernel's random source (time and pid
/// when it cannot be read): session ids and unpredictable temp names.
pub fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    let ok = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        let t = jiff::Timestamp::now().as_nanosecond() as u64
            ^ u64::from(std::process::id()).rotate_left(40);
        b = t.to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first component of `path` (itself included) that is a symlink, if
/// any. Host folders a profile names were resolved at validation; a
/// symlink appearing in them afterwards would redirect the bind mount.
pub fn symlink_component(path: &Path) -> Option<std::path::PathBuf> {
    let mut cur = std::path::PathBuf::new();
    for c in path.components() {
        cur.push(c);
        if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(cur);
        }
    }
    None
}

/// `name` as the path a child process runs: a name without a slash is
/// looked up in this process's `PATH` as `execvp` does (the first
/// executable regular file); anything else, or a name found nowhere, is
/// returned as it is (and fails to spawn as before).
///
/// Why: the standard library starts a child with `posix_spawn` (a
/// `vfork`-like clone sharing the parent's memory until `exec`) unless the
/// child's environment sets `PATH` and the program is a bare name; then it
/// must `fork`, which copies the daemon's page tables and leaves the parent
/// copy-on-write faults. Every `podman` and `git` the daemon runs gets a
/// scrubbed environment with `PATH` (issue 18: the CPU of a session).
pub fn program_path(name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return name.into();
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|p| {
                fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    found.unwrap_or_else(|| name.into())
}

/// Make a rename or create in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `FS_TOPDIR_FL` (`linux/fs.h`): chattr's `T`.
const FS_TOPDIR_FL: nix::libc::c_int = 0x0002_0000;

nix::ioctl_read_bad!(fs_get_flags, nix::libc::FS_IOC_GETFLAGS, nix::libc::c_int);
nix::ioctl_write_ptr_bad!(fs_set_flags, nix::libc::FS_IOC_SETFLAGS, nix::libc::c_int);

/// Mark the folder `dir` as the top of directory hierarchies (`chattr +T`):
/// ext4 then places each new sub-folder, with the files made in it, in a
/// block group of its own choosing (the Orlov spread it gives top-level
/// folders) instead of beside `dir`. For the work folders (issue 18): each
/// session's is one such hierarchy, made and removed whole, and ext4
/// without a journal skips every inode freed in the last minute or more
/// in a block group, one by one, for each new inode there; spread over
/// groups, no group piles those up. `Ok(false)`: the file system has no
/// such flag (anything but ext2/3/4), nothing changed.
pub fn spread_subfolders(dir: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir)?;
    let mut flags: nix::libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS stores one int (the kernel's `int`, whatever
    // the `long` in the request's encoding) through the pointer, which
    // points at `flags`, a live local; the descriptor is `f`'s, open for
    // the whole call.
    let got = unsafe { fs_get_flags(f.as_raw_fd(), &mut flags) };
    match got {
        Err(e) if no_such_flag(e) => return Ok(false),
        other => other.map_err(io::Error::from)?,
    };
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(true);
    }
    let with = flags | FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which
    // points at `with`, a live local; the descriptor is `f`'s, as above.
    match unsafe { fs_set_flags(f.as_raw_fd(), &with) } {
        Err(e) if no_such_flag(e) => Ok(false),
        other => other.map(|_| true).map_err(io::Error::from),
    }
}

/// How file systems (and FUSE or sandbox layers) without the flags say so.
fn no_such_flag(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(
        e,
        Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_marked_top_of_hierarchies_once_where_the_file_system_has_the_flag_issue_18() {
        let d = tempfile::tempdir().expect("tempdir");
        let work = d.path().join("work");
        fs::create_dir(&work).expect("mkdir");
        let first = match spread_subfolders(&work) {
            Ok(marked) => marked,
            // A sandbox that forbids the ioctl: the daemon logs it and
            // goes on; nothing to check here.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => return,
            Err(e) => panic!("{e}"),
        };
        // Again: nothing to change, the same answer.
        assert_eq!(spread_subfolders(&work).expect("again"), first);
        if first {
            let lsattr = std::process::Command::new("lsattr")
                .arg("-d")
                .arg(&work)
                .output();
            if let Some(out) = lsattr.ok().filter(|o| o.status.success()) {
                let attrs = String::from_utf8_lossy(&out.stdout);
                let flags = attrs.split_whitespace().next().unwrap_or_default();
                assert!(flags.contains('T'), "{attrs}");
            }
        }
        // A link is not followed, a file is not a folder.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&work, &link).expect("symlink");
        assert!(spread_subfolders(&link).is_err());
        let file = d.path().join("file");
        fs::write(&file, b"").expect("write");
        assert!(spread_subfolders(&file).is_err());
    }

    #[test]
    fn a_program_is_found_on_path_as_exec_would_issue_18() {
        let sh = program_path("sh");
        assert!(sh.is_absolute(), "{}", sh.display());
        assert!(sh.ends_with("sh"));
        assert_eq!(program_path("/bin/true"), Path::new("/bin/true"));
        assert_eq!(program_path("./x"), Path::new("./x"));
        assert_eq!(
            program_path("agentd-no-such-program"),
            Path::new("agentd-no-such-program")
        );
    }

    /// A value whose serialisation fails, as a map with non-string keys or
    /// a failing `Serialize` would.
    struct Unserialisable;

    impl serde::Serialize for Unserialisable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("not today"))
        }
    }

    #[test]
    fn a_value_that_cannot_be_serialised_is_an_error_and_the_file_is_kept_issue_17() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.json");
        write_atomic(&p, b"{\"kept\": true}\n", 0o600).expect("write");
        let e = write_json_atomic(&p, &Unserialisable, 0o600).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not today"), "{e}");
        assert_eq!(fs::read(&p).expect("read"), b"{\"kept\": true}\n");
        assert_eq!(fs::read_dir(d.path()).expect("ls").count(), 1);
        assert!(json_pretty(&Unserialisable).is_err());
        // What can be serialised is written whole, with a final newline.
        write_json_atomic(&p, &serde_json::json!({"a": 1}), 0o600).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"{\n  \"a\": 1\n}\n");
    }

    #[test]
    fn replaces_whole_files_and_leaves_no_temp() {
        for write in [write_atomic, write_atomic_scratch] {
            let d = tempfile::tempdir().expect("tempdir");
            let p = d.path().join("x.json");
            write(&p, b"one", 0o644).expect("write");
            write(&p, b"two", 0o600).expect("write");
            assert_eq!(fs::read(&p).expect("read"), b"two");
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &fs::metadata(&p).expect("stat").permissions(),
            );
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(fs::read_dir(d.path()).expect("ls").count(), 1);
        }
    }

    #[test]
    fn a_planted_link_is_replaced_never_written_through_issue_13() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        fs::write(&victim, "untouched").expect("write");
        let dir = d.path().join("requests");
        fs::create_dir(&dir).expect("mkdir");
        let p = dir.join("x.toml");
        std::os::unix::fs::symlink(&victim, &p).expect("ln");
        // A FIFO where an old daemon put its temp file: irrelevant now.
        let old_tmp = dir.join(format!(".x.toml.{}.tmp", std::process::id()));
        nix::unistd::mkfifo(&old_tmp, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        write_atomic(&p, b"fire", 0o644).expect("write");
        assert_eq!(fs::read(&victim).expect("read"), b"untouched");
        assert!(
            !fs::symlink_metadata(&p)
                .expect("stat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&p).expect("read"), b"fire");
    }

    #[test]
    fn symlink_components_are_found_issue_13() {
        let d = tempfile::tempdir().expect("tempdir");
        let real = d.path().join("real/sub");
        fs::create_dir_all(&real).expect("mkdir");
        assert_eq!(symlink_component(&real), None);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("real"), &link).expect("ln");
        assert_eq!(symlink_component(&link.join("sub")), Some(link));
    }
}
