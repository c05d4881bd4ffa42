//! The `podman run` command line for a session, built from plain data.
//! PURE, so every flag is unit-tested without Podman.
//!
//! Secrets never appear here: credential values reach the session through a
//! file mounted into the container (see `execute::secrets`), so nothing in
//! argv or in `podman inspect` carries them. A Podman secret is named here
//! (its name, never its value) and always mounted as a file: `type=env`
//! would show the value in `podman inspect` on Podman 4.3.

use std::path::{Path, PathBuf};

use crate::desired::Network;
use crate::runtime::SessionSpec;
pub use crate::runtime::{BindMount, SecretMount};

use super::labels;

/// Everything `podman run` needs for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub labels: Vec<(String, String)>,
    /// Numeric uid and gid the command runs as.
    pub uid: u32,
    pub gid: u32,
    /// `--userns=` (rootless: `keep-id:uid=N,gid=N`).
    pub userns: Option<String>,
    /// User name (the profile) and home folder for the passwd entry.
    pub user: String,
    pub home: String,
    pub workdir: String,
    /// Plain environment; never secret values.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    /// Podman secrets mounted as files, owned by `uid`, mode 0400.
    pub secrets: Vec<SecretMount>,
    /// Where conmon writes the container's stdout/stderr (k8s-file format).
    pub log_path: PathBuf,
    /// Bound on that file, so a runaway agent cannot fill the host disk
    /// (conmon truncates it past this size).
    pub log_max_bytes: Option<u64>,
    /// Where the OCI runtime writes the container's host pid (conmon's
    /// `--container-pidfile`): with it, an exit is confirmed without asking
    /// Podman (`exits::process_gone`).
    pub pid_file: PathBuf,
    pub network: Option<String>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// argv inside the container.
    pub command: Vec<String>,
    /// `--rm`: Podman's clean-up after the exit removes the container.
    pub remove_on_exit: bool,
}

/// Where the OCI runtime writes the container's host pid, in the
/// session's runtime folder (outside every mount of the session).
pub fn pid_file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("container.pid")
}

/// Where the backend records which container a session's `podman run`
/// created and the image it ran (`ended.rs`), beside the pid file.
pub fn record_file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("container.json")
}

impl RunSpec {
    /// The `podman run` of a prepared session. Rootless, the session uid is
    /// mapped onto the daemon's own uid (`--userns=keep-id:uid=N,gid=N`),
    /// so what the daemon owns on the host the session owns inside, and
    /// what the agent creates stays the daemon's to take back and remove.
    pub fn for_session(spec: &SessionSpec, rootless: bool) -> RunSpec {
        let id = &spec.identity;
        RunSpec {
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: vec![
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::INSTANCE.to_string(), id.instance.clone()),
                (labels::SESSION.to_string(), id.session_id.clone()),
                (labels::PROFILE.to_string(), id.profile.clone()),
                (labels::REQUEST.to_string(), id.request.clone()),
                (labels::DEADLINE.to_string(), id.deadline.to_string()),
            ],
            uid: spec.uid,
            gid: spec.gid,
            userns: rootless.then(|| format!("keep-id:uid={},gid={}", spec.uid, spec.gid)),
            user: spec.user.clone(),
            home: spec.home.clone(),
            workdir: spec.workdir.clone(),
            env: spec.env.clone(),
            mounts: spec.mounts.clone(),
            secrets: spec.secrets.clone(),
            log_path: super::console::capture_path(&spec.runtime_dir),
            log_max_bytes: spec.console_max_bytes,
            pid_file: pid_file(&spec.runtime_dir),
            network: match &spec.network {
                Network::Default => None,
                Network::None => Some("none".into()),
                Network::Named(n) => Some(n.clone()),
            },
            memory: spec.memory.clone(),
            cpus: spec.cpus,
            pids_limit: spec.pids_limit,
            command: spec.command.clone(),
            remove_on_exit: false,
        }
    }
}

/// argv after `podman` for `podman run -d ...`.
pub fn run_args(spec: &RunSpec) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--detach".into()];
    if spec.remove_on_exit {
        a.push("--rm".into());
    }
    a.extend([
        // A missing image is a start failure, never a registry pull.
        "--pull=never".into(),
        // catatonit as PID 1 forwards `podman stop`'s SIGTERM to the command.
        "--init".into(),
        "--security-opt=no-new-privileges".into(),
        format!("--name={}", spec.name),
    ]);
    for (k, v) in &spec.labels {
        a.push(format!("--label={k}={v}"));
    }
    if let Some(u) = &spec.userns {
        a.push(format!("--userns={u}"));
    }
    a.push(format!("--user={}:{}", spec.uid, spec.gid));
    a.push(format!(
        "--passwd-entry={user}:*:{uid}:{gid}:{user}:{home}:/bin/sh",
        user = spec.user,
        uid = spec.uid,
        gid = spec.gid,
        home = spec.home
    ));
    a.push(format!("--workdir={}", spec.workdir));
    for (k, v) in &spec.env {
        a.push(format!("--env={k}={v}"));
    }
    for m in &spec.mounts {
        let mut opt = format!(
            "--mount=type=bind,source={},target={}",
            m.source.display(),
            m.target
        );
        if m.read_only {
            opt.push_str(",readonly=true");
        }
        a.push(opt);
    }
    for m in &spec.secrets {
        a.push(format!(
            "--secret={},type=mount,target={},uid={},gid={},mode=0400",
            m.secret, m.target, spec.uid, spec.gid
        ));
    }
    a.push("--log-driver=k8s-file".into());
    a.push(format!("--log-opt=path={}", spec.log_path.display()));
    if let Some(m) = spec.log_max_bytes {
        a.push(format!("--log-opt=max-size={m}"));
    }
    a.push(format!("--pidfile={}", spec.pid_file.display()));
    if let Some(n) = &spec.network {
        a.push(format!("--network={n}"));
    }
    if let Some(m) = &spec.memory {
        a.push(format!("--memory={m}"));
    }
    if let Some(c) = spec.cpus {
        a.push(format!("--cpus={c}"));
    }
    if let Some(p) = spec.pids_limit {
        a.push(format!("--pids-limit={p}"));
    }
    a.push(spec.image.clone());
    a.extend(spec.command.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            name: "agentd-1234abcd-r1".into(),
            image: "localhost/img:1".into(),
            labels: vec![("io.agentd.managed".into(), "true".into())],
            uid: 10001,
            gid: 10001,
            userns: None,
            user: "rev".into(),
            home: "/home/rev".into(),
            workdir: "/home/rev/repo".into(),
            env: vec![("AGENTD_PROFILE".into(), "rev".into())],
            mounts: vec![
                BindMount {
                    source: "/w/home".into(),
                    target: "/home/rev".into(),
                    read_only: false,
                },
                BindMount {
                    source: "/m".into(),
                    target: "/agentd/methodology".into(),
                    read_only: true,
                },
            ],
            secrets: vec![],
            log_path: "/w/console.k8s.log".into(),
            pid_file: "/w/container.pid".into(),
            log_max_bytes: Some(2048),
            network: Some("none".into()),
            memory: Some("512m".into()),
            cpus: Some(1.5),
            pids_limit: Some(100),
            command: vec!["/bin/sh".into(), "-c".into(), "echo $HOME".into()],
            remove_on_exit: false,
        }
    }

    #[test]
    fn every_field_becomes_its_flag() {
        let a = run_args(&spec()).join(" ");
        assert_eq!(
            a,
            "run --detach --pull=never --init --security-opt=no-new-privileges --name=agentd-1234abcd-r1 \
             --label=io.agentd.managed=true --user=10001:10001 \
             --passwd-entry=rev:*:10001:10001:rev:/home/rev:/bin/sh --workdir=/home/rev/repo \
             --env=AGENTD_PROFILE=rev --mount=type=bind,source=/w/home,target=/home/rev \
             --mount=type=bind,source=/m,target=/agentd/methodology,readonly=true \
             --log-driver=k8s-file --log-opt=path=/w/console.k8s.log --log-opt=max-size=2048 --pidfile=/w/container.pid --network=none --memory=512m \
             --cpus=1.5 --pids-limit=100 localhost/img:1 /bin/sh -c echo $HOME"
        );
    }

    #[test]
    fn a_container_that_removes_itself_is_run_with_rm_issue_18() {
        let mut s = spec();
        s.remove_on_exit = true;
        let a = run_args(&s);
        assert_eq!(a[..3], ["run", "--detach", "--rm"]);
        assert_eq!(a.len(), run_args(&spec()).len() + 1);
        assert!(!run_args(&spec()).contains(&"--rm".to_string()));
    }

    #[test]
    fn rootless_maps_the_session_uid_onto_the_daemons_user_issue_10() {
        let mut s = spec();
        s.userns = Some("keep-id:uid=10001,gid=10001".into());
        let a = run_args(&s);
        let at = |f: &str| a.iter().position(|x| x == f).expect(f);
        // Before --user, which then names the mapped uid.
        assert!(at("--userns=keep-id:uid=10001,gid=10001") < at("--user=10001:10001"));
        assert!(!run_args(&spec()).iter().any(|f| f.starts_with("--userns")));
    }

    #[test]
    fn a_podman_secret_is_mounted_as_a_file_for_the_session_user_issue_11() {
        let mut s = spec();
        s.secrets = vec![SecretMount {
            secret: "gh-token".into(),
            target: "/agentd/secrets/GH_TOKEN".into(),
        }];
        let a = run_args(&s);
        let flags: Vec<&String> = a.iter().filter(|f| f.starts_with("--secret")).collect();
        assert_eq!(
            flags,
            [
                "--secret=gh-token,type=mount,target=/agentd/secrets/GH_TOKEN,uid=10001,gid=10001,mode=0400"
            ]
        );
        assert!(!a.iter().any(|f| f.contains("type=env")));
    }

    #[test]
    fn the_command_comes_last_and_verbatim() {
        let mut s = spec();
        s.command = vec!["--not-a-flag".into(), "a b".into()];
        let a = run_args(&s);
        assert_eq!(
            &a[a.len() - 3..],
            ["localhost/img:1", "--not-a-flag", "a b"]
        );
    }

    #[test]
    fn a_session_spec_becomes_its_podman_run_issue_18() {
        let session = SessionSpec {
            name: "agentd-i-r1".into(),
            image: "localhost/img:1".into(),
            identity: crate::runtime::Identity {
                instance: "i".into(),
                session_id: "00ff".into(),
                profile: "rev".into(),
                request: "r1".into(),
                deadline: 1_795_337_999_000,
            },
            uid: 10001,
            gid: 10001,
            user: "rev".into(),
            home: "/home/rev".into(),
            workdir: "/home/rev/repo".into(),
            env: vec![],
            mounts: vec![],
            secrets: vec![],
            runtime_dir: "/w".into(),
            console_max_bytes: Some(2048),
            network: Network::None,
            memory: None,
            cpus: None,
            pids_limit: None,
            command: vec!["true".into()],
        };
        let a = run_args(&RunSpec::for_session(&session, false)).join(" ");
        assert!(
            a.contains(
                "--label=io.agentd.managed=true --label=io.agentd.instance=i \
                 --label=io.agentd.session=00ff --label=io.agentd.profile=rev \
                 --label=io.agentd.request=r1 --label=io.agentd.deadline=1795337999000 \
                 --user=10001:10001"
            ),
            "{a}"
        );
        assert!(
            a.contains("--log-opt=path=/w/console.k8s.log --log-opt=max-size=2048 --pidfile=/w/container.pid --network=none"),
            "{a}"
        );
        let rootless = run_args(&RunSpec::for_session(&session, true));
        assert!(rootless.contains(&"--userns=keep-id:uid=10001,gid=10001".to_string()));
        assert!(!a.contains("--userns"));
    }
}
