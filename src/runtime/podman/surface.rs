//! The daemon's control surface on the host as Podman makes it (issue 17
//! item 6): the daemon's folders and Podman's own, which no profile mount
//! and no `methodology_dir` may hold or lie inside.
//!
//! Rootless, the agent has the daemon user's uid on the host (keep-id), so a
//! writable mount of any of them runs the agent's code outside the container
//! (a systemd user unit, a containers.conf hook, an ssh key, a shell start-up
//! file, a request or profile of its own, a forged exit file); a read-only
//! one still leaks credentials (registry passwords, other sessions'
//! secrets). Rootful, the same paths are refused: the session uid cannot
//! write most of them, but nothing there is any session's business.
//!
//! `surface` is pure (what to guard, from plain inputs; unit-tested for both
//! modes); `Inputs::of` reads the daemon's environment and account once per
//! start; `runtime::surface::refuse` is the check `execute::start` runs on
//! every host path a profile names.

use std::path::PathBuf;

use super::Host;
use crate::runtime::surface::{DaemonFolders, Guarded};

const WHY_STATE: &str = "it holds every session's credentials and work folder";
const WHY_AUDIT: &str = "it holds every session's sealed record";
const WHY_PROFILES: &str =
    "a session that writes there defines its own sessions: their mounts, network and credentials";
const WHY_REQUESTS: &str = "a session that writes there requests sessions of any profile";
const WHY_PODMAN: &str =
    "Podman's own state: a session that writes there controls its containers and images";
const WHY_SOCKET: &str = "Podman's API: a session that connects to it controls its containers (a read-only mount connects too)";
const WHY_EXITS: &str = "the exit codes and events the daemon believes come from there: a session that writes there forges them";
const WHY_AUTH: &str = "registry passwords: a read-only mount leaks them too";
const WHY_CONF: &str = "Podman's configuration, which names the programs Podman runs";
const WHY_RUNTIME: &str = "rootless, it holds the user's D-Bus, systemd and Podman sockets: a session that connects to them (a read-only mount connects too) starts processes on the host as the daemon's user";
const WHY_HOME: &str = "rootless, a session has the daemon's uid on the host, and what it writes there (~/.config/systemd, ~/.config/containers, ~/.ssh, shell start-up files) runs code on the host as that user";

/// What a home of `/` holds that `WHY_HOME` is about (guarding `/` itself
/// would refuse every mount).
const HOME_DOTFILES: [&str; 11] = [
    ".config",
    ".local",
    ".ssh",
    ".docker",
    ".profile",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".zshrc",
    ".zshenv",
    ".zprofile",
];

/// What `surface` is computed from: the daemon's folders, what `podman
/// info` said, and the environment Podman finds its credentials by.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub state: PathBuf,
    pub audit_root: PathBuf,
    pub desired: PathBuf,
    /// The exit-file folder the daemon watches (`exits::exit_dir`).
    pub exit_dir: Option<PathBuf>,
    /// The daemon's euid.
    pub uid: u32,
    /// `REGISTRY_AUTH_FILE`, `XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME`.
    pub registry_auth_file: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub config_home: Option<PathBuf>,
    /// `CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`,
    /// `CONTAINERS_REGISTRIES_CONF` when set.
    pub podman_conf: Vec<PathBuf>,
    /// `$HOME` and the home of the daemon's account (they may differ).
    pub homes: Vec<PathBuf>,
}

impl Inputs {
    /// The inputs of this daemon: its folders and environment (the same
    /// environment its Podman calls keep, see `podman::scrub_env`).
    pub fn of(daemon: &DaemonFolders) -> Inputs {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let uid = nix::unistd::geteuid();
        let account_home = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.dir);
        Inputs {
            state: daemon.state.clone(),
            audit_root: daemon.audit_root.clone(),
            desired: daemon.desired.clone(),
            exit_dir: super::exits::exit_dir(),
            uid: uid.as_raw(),
            registry_auth_file: env("REGISTRY_AUTH_FILE"),
            runtime_dir: env("XDG_RUNTIME_DIR"),
            config_home: env("XDG_CONFIG_HOME"),
            podman_conf: [
                "CONTAINERS_CONF",
                "CONTAINERS_STORAGE_CONF",
                "CONTAINERS_REGISTRIES_CONF",
            ]
            .iter()
            .filter_map(|k| env(k))
            .collect(),
            homes: env("HOME").into_iter().chain(account_home).collect(),
        }
    }
}

/// Every path of the daemon's control surface, most specific reasons first.
/// PURE.
pub fn surface(i: &Inputs, host: &Host) -> Vec<Guarded> {
    let mut out: Vec<Guarded> = Vec::new();
    let mut add = |what: &'static str, path: PathBuf, why: &'static str| {
        let dup = out.iter().any(|g| g.what == what && g.path == path);
        if !path.as_os_str().is_empty() && !dup {
            out.push(Guarded { what, path, why });
        }
    };
    add("state dir", i.state.clone(), WHY_STATE);
    add("audit root", i.audit_root.clone(), WHY_AUDIT);
    if !i.desired.as_os_str().is_empty() {
        add(
            "desired profiles/ folder",
            i.desired.join("profiles"),
            WHY_PROFILES,
        );
        add(
            "desired requests/ folder",
            i.desired.join("requests"),
            WHY_REQUESTS,
        );
    }
    add(
        "Podman storage",
        PathBuf::from(&host.graph_root),
        WHY_PODMAN,
    );
    add(
        "Podman volumes",
        PathBuf::from(&host.volume_path),
        WHY_PODMAN,
    );
    add("Podman run root", PathBuf::from(&host.run_root), WHY_PODMAN);
    add("Podman socket", PathBuf::from(&host.socket), WHY_SOCKET);
    if let Some(d) = &i.exit_dir {
        add("Podman exit-file folder", d.clone(), WHY_EXITS);
    }
    // Podman's tmp dir (exit files, events), whichever exit dir is watched.
    let tmp = if host.rootless {
        i.runtime_dir.as_ref().map(|r| r.join("libpod/tmp"))
    } else {
        Some(PathBuf::from("/run/libpod"))
    };
    if let Some(t) = tmp {
        add("Podman tmp dir", t, WHY_EXITS);
    }
    for f in auth_files(i) {
        add("registry credentials", f, WHY_AUTH);
    }
    for f in &i.podman_conf {
        add("Podman configuration", f.clone(), WHY_CONF);
    }
    if host.rootless {
        let runtime = i
            .runtime_dir
            .iter()
            .cloned()
            .chain([PathBuf::from(format!("/run/user/{}", i.uid))]);
        for r in runtime {
            add("user's runtime dir", r, WHY_RUNTIME);
        }
        for home in &i.homes {
            if home.parent().is_some() {
                add("user's home", home.clone(), WHY_HOME);
            } else {
                for f in HOME_DOTFILES {
                    add("user's home", home.join(f), WHY_HOME);
                }
            }
        }
    }
    out
}

/// Where Podman (containers/image) reads registry credentials from:
/// `REGISTRY_AUTH_FILE`; `$XDG_RUNTIME_DIR/containers/auth.json`, else
/// `/run/containers/<uid>/auth.json`; `$XDG_CONFIG_HOME/containers/
/// auth.json` (default `~/.config`); Docker's `~/.docker/config.json` and
/// `~/.dockercfg`.
fn auth_files(i: &Inputs) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = i.registry_auth_file.iter().cloned().collect();
    out.push(match &i.runtime_dir {
        Some(r) => r.join("containers/auth.json"),
        None => PathBuf::from(format!("/run/containers/{}/auth.json", i.uid)),
    });
    if let Some(c) = &i.config_home {
        out.push(c.join("containers/auth.json"));
    }
    for home in &i.homes {
        if i.config_home.is_none() {
            out.push(home.join(".config/containers/auth.json"));
        }
        out.push(home.join(".docker/config.json"));
        out.push(home.join(".dockercfg"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::surface::refuse;
    use std::path::Path;

    fn host(rootless: bool) -> Host {
        let (graph, run, sock) = if rootless {
            (
                "/home/u/.local/share/containers/storage",
                "/run/user/1001/containers",
                "/run/user/1001/podman/podman.sock",
            )
        } else {
            (
                "/var/lib/containers/storage",
                "/run/containers/storage",
                "/run/podman/podman.sock",
            )
        };
        Host {
            version: "4.3.1".into(),
            rootless,
            cgroup_version: "v2".into(),
            cgroup_manager: "systemd".into(),
            cgroup_controllers: vec![],
            network_backend: "netavark".into(),
            storage_driver: "overlay".into(),
            graph_root: graph.into(),
            run_root: run.into(),
            volume_path: format!("{graph}/volumes"),
            socket: sock.into(),
            mapped_ids: None,
        }
    }

    fn inputs(rootless: bool) -> Inputs {
        let (uid, home, runtime) = if rootless {
            (1001, "/home/u", Some(PathBuf::from("/run/user/1001")))
        } else {
            (0, "/root", None)
        };
        Inputs {
            state: "/srv/agentd/state".into(),
            audit_root: "/srv/agentd/audit".into(),
            desired: "/srv/agentd/desired".into(),
            exit_dir: Some(match &runtime {
                Some(r) => r.join("libpod/tmp/exits"),
                None => "/run/libpod/exits".into(),
            }),
            uid,
            registry_auth_file: None,
            runtime_dir: runtime,
            config_home: None,
            podman_conf: vec![],
            homes: vec![home.into()],
        }
    }

    /// The refusal of `p` in that mode, or `None` when it may be mounted.
    fn check(rootless: bool, p: &str) -> Option<String> {
        let g = surface(&inputs(rootless), &host(rootless));
        refuse("mounts[0].source", Path::new(p), &g).err()
    }

    #[test]
    fn podmans_own_paths_and_credentials_are_guarded_in_both_modes_issue_17() {
        for (rootless, path, what) in [
            (false, "/run/containers/storage", "Podman run root"),
            (false, "/run/podman", "Podman socket"),
            (false, "/run/libpod/exits", "Podman exit-file folder"),
            (false, "/run/libpod", "Podman tmp dir"),
            (false, "/var/lib/containers", "Podman storage"),
            (false, "/run/containers/0", "registry credentials"),
            (false, "/root/.docker", "registry credentials"),
            (false, "/root/.config/containers", "registry credentials"),
            (true, "/run/user/1001/containers", "Podman run root"),
            (true, "/run/user/1001/podman", "Podman socket"),
            (true, "/run/user/1001/libpod/tmp/exits", "exit-file folder"),
            (
                true,
                "/run/user/1001/containers/auth.json",
                "registry credentials",
            ),
        ] {
            let msg = check(rootless, path).unwrap_or_else(|| panic!("{path} allowed"));
            assert!(
                msg.starts_with(&format!("mounts[0].source `{path}` overlaps the daemon's ")),
                "{msg}"
            );
            assert!(msg.contains(what), "{path}: {msg}");
        }
        // REGISTRY_AUTH_FILE is where Podman reads credentials first.
        let mut i = inputs(false);
        i.registry_auth_file = Some("/etc/agentd/auth.json".into());
        let g = surface(&i, &host(false));
        let msg = refuse("methodology_dir", Path::new("/etc/agentd"), &g).expect_err("refused");
        assert!(msg.contains("registry credentials `/etc/agentd/auth.json` (registry passwords: a read-only mount leaks them too)"), "{msg}");
        // Folders beside them are fine.
        for ok in ["/srv/data", "/run/lock", "/var/lib/other", "/root/projects"] {
            assert_eq!(check(false, ok), None, "{ok}");
        }
    }

    #[test]
    fn the_desired_dirs_kind_folders_and_their_ancestors_are_guarded_not_their_siblings_issue_17() {
        for p in [
            "/srv/agentd/desired/profiles",
            "/srv/agentd/desired/requests/sub",
            "/srv/agentd/desired",
            "/srv",
        ] {
            assert!(check(false, p).is_some(), "{p}");
        }
        let both = check(false, "/srv/agentd/desired").expect("refused");
        assert!(
            both.contains("desired profiles/ folder `/srv/agentd/desired/profiles`"),
            "{both}"
        );
        assert!(
            both.contains("desired requests/ folder `/srv/agentd/desired/requests`"),
            "{both}"
        );
        assert_eq!(check(false, "/srv/agentd/desired/methodology"), None);
        assert_eq!(check(true, "/srv/agentd/desired/methodology"), None);
    }

    #[test]
    fn rootless_the_whole_home_and_runtime_dir_are_guarded_rootful_not_issue_17() {
        for p in [
            "/home/u",
            "/home/u/.config/systemd",
            "/home/u/.ssh",
            "/home/u/.bashrc",
            "/home/u/src/project",
        ] {
            let msg = check(true, p).unwrap_or_else(|| panic!("{p} allowed rootless"));
            assert!(msg.contains("user's home `/home/u`"), "{msg}");
            assert!(msg.contains("runs code on the host"), "{msg}");
        }
        let msg = check(true, "/run/user/1001/bus").expect("refused");
        assert!(msg.contains("user's runtime dir `/run/user/1001`"), "{msg}");
        // Rootful, the daemon's home is not the session's (uid 10001 owns
        // nothing there): only the credentials in it are guarded.
        assert_eq!(check(false, "/root/projects"), None);
        assert!(check(false, "/root/.docker/config.json").is_some());
        // A home of `/` guards its dot files, not every path.
        let mut i = inputs(true);
        i.homes = vec!["/".into()];
        let g = surface(&i, &host(true));
        assert!(refuse("f", Path::new("/.config/systemd"), &g).is_err());
        assert!(refuse("f", Path::new("/srv/data"), &g).is_ok());
    }

    #[test]
    fn every_overlapping_path_is_named_with_its_reason_once_issue_17() {
        let msg = check(false, "/run").expect("refused");
        for named in [
            "Podman run root `/run/containers/storage`",
            "Podman socket `/run/podman/podman.sock`",
            "Podman exit-file folder `/run/libpod/exits`, Podman tmp dir `/run/libpod`",
            "registry credentials `/run/containers/0/auth.json`",
        ] {
            assert!(msg.contains(named), "{named}: {msg}");
        }
        assert_eq!(msg.matches(WHY_EXITS).count(), 1, "{msg}");
        assert!(msg.ends_with("(see docs/security.md)"), "{msg}");
    }
}
