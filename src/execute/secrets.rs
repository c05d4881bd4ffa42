//! Secret values at session start (issue 11): read from where operators
//! keep them, and turned into the credentials file the entry wrapper sources.
//!
//! - `source`: the daemon's environment variable, taken as is.
//! - `systemd_credential`: `$CREDENTIALS_DIRECTORY/<name>` (systemd's
//!   `LoadCredential=`/`LoadCredentialEncrypted=`), read on the host.
//! - `file`: an absolute path, read on the host only when the file is
//!   owned by the daemon's user and has no group/other permission bits.
//! - `podman_secret`: never read by agentd. Podman mounts it into the
//!   session (`--secret NAME,type=mount`, never `type=env`, which Podman
//!   4.3 shows in `podman inspect`) and the credentials file reads it into
//!   the variable with `/bin/sh` builtins.
//!
//! Values read from a file lose ONE trailing newline (`echo secret > f`
//! and `systemd-creds` both end files with one); everything else is kept
//! byte for byte. They are capped at [`MAX_SECRET_BYTES`], must be UTF-8
//! and hold no NUL byte (an environment variable cannot). A source that is
//! missing or refused is an error naming the secret and the source, which
//! becomes the session's `start_failed`: never an empty value. Values are
//! never logged, and errors never quote them.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::desired::{Credential, MAX_SECRET_BYTES, SecretSource};
use crate::inject::Placeholder;

/// A secret that cannot be read; `who` names it (`credential `GH_TOKEN``,
/// `repo_token`). Each message names the source and the fix, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{who}: the daemon's environment variable `{var}` is not set")]
    EnvUnset { who: String, var: String },
    #[error(
        "{who}: systemd credential `{name}`: $CREDENTIALS_DIRECTORY is not set; hint: run agentd from a systemd unit with LoadCredential={name}:/path/to/secret (or LoadCredentialEncrypted=)"
    )]
    NoCredentialsDirectory { who: String, name: String },
    #[error(
        "{who}: systemd credential `{name}` ({}) {why}; hint: give the agentd unit LoadCredential={name}:/path/to/secret (or LoadCredentialEncrypted=)",
        path.display()
    )]
    Credential {
        who: String,
        name: String,
        path: PathBuf,
        why: FileProblem,
    },
    #[error("{who}: file `{}` {why}", path.display())]
    File {
        who: String,
        path: PathBuf,
        why: FileProblem,
    },
    #[error(
        "{who}: podman secret `{name}` cannot be read by agentd; hint: use systemd_credential, file or source"
    )]
    RuntimeSecret { who: String, name: String },
    #[error(
        "{who} has `inject` but no placeholder was made for it (agentd's own fault; the value is never given instead)"
    )]
    NoPlaceholder { who: String },
}

/// What is wrong with a secret file: completes a sentence starting with
/// the file's name.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("does not exist")]
    Missing,
    #[error("is a symlink (refused: name the file itself)")]
    Symlink,
    #[error("cannot be opened: {0}")]
    Open(io::Error),
    #[error("cannot be examined: {0}")]
    Stat(io::Error),
    #[error("is not a regular file")]
    NotRegular,
    #[error(
        "is owned by uid {owner}, not by agentd's user (uid {me}); hint: chown it to the user agentd runs as"
    )]
    Owner { owner: u32, me: u32 },
    #[error("is accessible to group or others (mode {mode:04o}); hint: chmod 600 {}", path.display())]
    Mode { mode: u32, path: PathBuf },
    #[error("cannot be read: {0}")]
    Read(io::Error),
    #[error("is too large (the limit is {MAX_SECRET_BYTES} bytes)")]
    TooLarge,
    #[error("holds a NUL byte, which an environment variable cannot")]
    Nul,
    #[error("is not UTF-8 text")]
    NotUtf8,
}

/// Where Podman mounts the session's Podman secrets.
pub const SECRETS_DIR: &str = "/agentd/secrets";

/// The in-container path of credential `name`'s Podman secret.
pub fn secret_target(name: &str) -> String {
    format!("{SECRETS_DIR}/{name}")
}

/// The value of a source agentd reads on the host. `who` names the secret
/// in messages (`credential `GH_TOKEN``, `repo_token`); `env` is the
/// daemon's environment (`CREDENTIALS_DIRECTORY` comes from it too).
pub fn read(
    who: &str,
    src: &SecretSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, SecretError> {
    let who = || who.to_string();
    match src {
        SecretSource::Env(var) => env(var).ok_or_else(|| SecretError::EnvUnset {
            who: who(),
            var: var.clone(),
        }),
        SecretSource::SystemdCredential(name) => {
            let dir = env("CREDENTIALS_DIRECTORY")
                .filter(|d| !d.is_empty())
                .ok_or_else(|| SecretError::NoCredentialsDirectory {
                    who: who(),
                    name: name.clone(),
                })?;
            let path = Path::new(&dir).join(name);
            read_file(&path, false).map_err(|why| SecretError::Credential {
                who: who(),
                name: name.clone(),
                path: path.clone(),
                why,
            })
        }
        SecretSource::File(path) => read_file(path, true).map_err(|why| SecretError::File {
            who: who(),
            path: path.clone(),
            why,
        }),
        SecretSource::PodmanSecret(name) => Err(SecretError::RuntimeSecret {
            who: who(),
            name: name.clone(),
        }),
    }
}

/// Read a secret file: never through a symlink (the last component), never
/// blocking (a FIFO is refused), a regular file of at most
/// [`MAX_SECRET_BYTES`]. `private`: also owned by the daemon's effective
/// user with no group/other permission bits.
fn read_file(path: &Path, private: bool) -> Result<String, FileProblem> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ENOENT) => FileProblem::Missing,
            Some(nix::libc::ELOOP) => FileProblem::Symlink,
            _ => FileProblem::Open(e),
        })?;
    let meta = f.metadata().map_err(FileProblem::Stat)?;
    if !meta.file_type().is_file() {
        return Err(FileProblem::NotRegular);
    }
    if private {
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(FileProblem::Owner {
                owner: meta.uid(),
                me,
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(FileProblem::Mode {
                mode: meta.mode() & 0o7777,
                path: path.to_path_buf(),
            });
        }
    }
    let mut bytes = Vec::new();
    (&mut f)
        .take(MAX_SECRET_BYTES as u64 + 2)
        .read_to_end(&mut bytes)
        .map_err(FileProblem::Read)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(FileProblem::TooLarge);
    }
    if bytes.contains(&0) {
        return Err(FileProblem::Nul);
    }
    String::from_utf8(bytes).map_err(|_| FileProblem::NotUtf8)
}

/// `export NAME='value'`, quoted for `/bin/sh`.
fn export_value(name: &str, value: &str) -> String {
    format!("export {name}='{}'\n", value.replace('\'', "'\\''"))
}

/// Lines that set `name` from the file Podman mounted at `target`, with
/// POSIX `sh` builtins only (the image needs nothing but `/bin/sh`): the
/// file is read line by line and joined, which keeps every byte but drops
/// one trailing newline, like the host-read forms. A value over
/// [`MAX_SECRET_BYTES`] ends the session (exit 125) before the agent runs.
fn export_from_file(name: &str, secret: &str, target: &str) -> String {
    format!(
        "agentd_v=; agentd_s=; agentd_l=\n\
         while IFS= read -r agentd_l || [ -n \"$agentd_l\" ]; do agentd_v=\"$agentd_v$agentd_s$agentd_l\"; agentd_s='\n'; done < '{target}' || exit 125\n\
         if [ \"${{#agentd_v}}\" -gt {MAX_SECRET_BYTES} ]; then echo 'agentd: credential {name} (podman secret {secret}) is over {MAX_SECRET_BYTES} bytes' >&2; exit 125; fi\n\
         export {name}=\"$agentd_v\"\n\
         unset agentd_v agentd_s agentd_l\n"
    )
}

/// The credentials file (`export` lines the entry wrapper sources), or
/// `None` when the profile has no credentials. Host-read values are read
/// now; Podman secrets are read inside the session from their mount.
pub fn script(
    credentials: &[Credential],
    placeholders: &BTreeMap<String, Placeholder>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, SecretError> {
    if credentials.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for c in credentials {
        let who = format!("credential `{}`", c.name);
        if c.inject.is_some() {
            // The value stays with the egress proxy (issue 21); the
            // session holds the placeholder the proxy recognises. Without
            // one, fail closed: never the value instead.
            let p = placeholders
                .get(&c.name)
                .ok_or(SecretError::NoPlaceholder { who })?;
            text.push_str(&export_value(&c.name, p.as_str()));
            continue;
        }
        match &c.source {
            SecretSource::PodmanSecret(secret) => {
                text.push_str(&export_from_file(&c.name, secret, &secret_target(&c.name)));
            }
            src => text.push_str(&export_value(&c.name, &read(&who, src, env)?)),
        }
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_credential_with_inject_never_puts_its_value_in_the_session_issue_21() {
        let plain = Credential {
            name: "PLAIN".into(),
            source: SecretSource::Env("P".into()),
            inject: None,
        };
        let c = Credential {
            name: "KEY".into(),
            source: SecretSource::Env("K".into()),
            inject: Some(crate::desired::Inject {
                hosts: Vec::new(),
                header: "x-api-key".into(),
                prefix: String::new(),
                suffix: String::new(),
            }),
        };
        let env = |_: &str| Some("sk-real-value".to_string());
        let e = script(std::slice::from_ref(&c), &BTreeMap::new(), &env)
            .expect_err("no placeholder")
            .to_string();
        assert!(e.contains("credential `KEY` has `inject`"), "{e}");
        assert!(!e.contains("sk-real-value"));
        let ph = Placeholder::generate().expect("random");
        let phs = BTreeMap::from([("KEY".to_string(), ph.clone())]);
        let text = script(&[c, plain], &phs, &env)
            .expect("script")
            .expect("some");
        assert_eq!(
            text.matches("sk-real-value").count(),
            1,
            "only the plain credential's value: {text}"
        );
        assert!(
            text.contains(&format!("export KEY='{}'", ph.as_str())),
            "{text}"
        );
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn secret_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    /// What `/bin/sh` gets in `$X` after sourcing `text`.
    fn sourced(text: &str, dir: &Path) -> Vec<u8> {
        let f = dir.join("creds.sh");
        fs::write(&f, text).expect("write");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(". '{}' && printf %s \"$X\"", f.display()))
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn a_private_file_is_read_without_one_trailing_newline_issue_11() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = secret_file(d.path(), "tok", b"s3cret\n", 0o600);
        let src = SecretSource::File(p);
        assert_eq!(
            read("c", &src, &no_env)
                .map_err(|e| e.to_string())
                .as_deref(),
            Ok("s3cret")
        );
        let p = secret_file(d.path(), "two", b"a\nb\n\n", 0o400);
        assert_eq!(
            read("c", &SecretSource::File(p), &no_env)
                .map_err(|e| e.to_string())
                .as_deref(),
            Ok("a\nb\n")
        );
    }

    #[test]
    fn a_group_readable_foreign_or_odd_file_is_refused_issue_11() {
        let d = tempfile::tempdir().expect("tempdir");
        let open = secret_file(d.path(), "open", b"x", 0o640);
        let e = read("credential `T`", &SecretSource::File(open), &no_env)
            .expect_err("0640")
            .to_string();
        assert!(
            e.contains("credential `T`: file `") && e.contains("mode 0640"),
            "{e}"
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("open"), &link).expect("symlink");
        let e = read("c", &SecretSource::File(link), &no_env)
            .expect_err("symlink")
            .to_string();
        assert!(e.contains("is a symlink"), "{e}");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let e = read("c", &SecretSource::File(fifo), &no_env)
            .expect_err("fifo")
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read("c", &SecretSource::File(d.path().join("nope")), &no_env)
            .expect_err("gone")
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let big = secret_file(d.path(), "big", &vec![b'a'; MAX_SECRET_BYTES + 1], 0o600);
        let e = read("c", &SecretSource::File(big), &no_env)
            .expect_err("big")
            .to_string();
        assert!(e.contains("too large"), "{e}");
        let nul = secret_file(d.path(), "nul", b"a\0b", 0o600);
        assert!(read("c", &SecretSource::File(nul), &no_env).is_err());
        if nix::unistd::geteuid().is_root() {
            let foreign = secret_file(d.path(), "foreign", b"x", 0o600);
            std::os::unix::fs::chown(&foreign, Some(54321), None).expect("chown");
            let e = read("c", &SecretSource::File(foreign), &no_env)
                .expect_err("foreign")
                .to_string();
            assert!(e.contains("owned by uid 54321"), "{e}");
        }
    }

    #[test]
    fn a_systemd_credential_is_read_from_credentials_directory_issue_11() {
        let d = tempfile::tempdir().expect("tempdir");
        secret_file(d.path(), "gh", b"tok\n", 0o444);
        let dir = d.path().display().to_string();
        let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| dir.clone());
        let src = SecretSource::SystemdCredential("gh".into());
        assert_eq!(
            read("c", &src, &env).map_err(|e| e.to_string()).as_deref(),
            Ok("tok")
        );
        let e = read("c", &SecretSource::SystemdCredential("other".into()), &env)
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("systemd credential `other`") && e.contains("does not exist"),
            "{e}"
        );
        let e = read("c", &src, &no_env).expect_err("no dir").to_string();
        assert!(e.contains("$CREDENTIALS_DIRECTORY is not set"), "{e}");
    }

    #[test]
    fn an_unset_variable_is_an_error_never_an_empty_value_issue_11() {
        let e = read("repo_token", &SecretSource::Env("NOPE".into()), &no_env)
            .expect_err("unset")
            .to_string();
        assert_eq!(
            e,
            "repo_token: the daemon's environment variable `NOPE` is not set"
        );
    }

    #[test]
    fn the_shell_reads_a_mounted_secret_byte_for_byte_but_one_newline_issue_11() {
        let d = tempfile::tempdir().expect("tempdir");
        for (content, want) in [
            (&b"plain"[..], &b"plain"[..]),
            (b"plain\n", b"plain"),
            (
                b"  two\\n lines \n'and' \"$HOME\"\n\n",
                b"  two\\n lines \n'and' \"$HOME\"\n",
            ),
            (b"", b""),
            (b"\n", b""),
        ] {
            let f = secret_file(d.path(), "s", content, 0o600);
            let text = export_from_file("X", "sec", &f.display().to_string());
            assert_eq!(sourced(&text, d.path()), want, "{content:?}");
        }
        let quoted = export_value("X", "it's $HOME `x`");
        assert_eq!(sourced(&quoted, d.path()), b"it's $HOME `x`");
    }
}
