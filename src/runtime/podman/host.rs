//! What this host's Podman is and can enforce, read once from `podman info`
//! when the daemon starts. PURE: parsing and the questions asked of it are
//! unit-tested with captured `podman info` output.
//!
//! The mode is detected, never configured: `podman info` of the daemon's own
//! user says whether that Podman is rootless.

use serde::{Deserialize, Serialize};

/// The facts of `podman info` agentd acts on or shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Podman's version.
    pub version: String,
    /// The daemon drives its user's rootless Podman.
    pub rootless: bool,
    /// `v1` or `v2`.
    pub cgroup_version: String,
    /// `systemd` or `cgroupfs`.
    pub cgroup_manager: String,
    /// Controllers Podman can use for this user's containers: every one
    /// rootful; on cgroup v2 rootless only those delegated to the user; none
    /// on cgroup v1 rootless.
    pub cgroup_controllers: Vec<String>,
    /// `netavark` or `cni`.
    pub network_backend: String,
    /// `overlay`, `vfs`, ...
    pub storage_driver: String,
    /// Where the storage keeps images (`store.graphRoot`).
    #[serde(default)]
    pub graph_root: String,
    /// Where the storage keeps its run-time state (`store.runRoot`).
    #[serde(default)]
    pub run_root: String,
    /// Where named volumes live (`store.volumePath`).
    #[serde(default)]
    pub volume_path: String,
    /// Podman's API socket (`host.remoteSocket.path`), whether or not a
    /// service listens on it.
    #[serde(default)]
    pub socket: String,
    /// Rootless: how many uids and gids the user namespace holds (the user
    /// plus its subordinate ranges); `None` rootful.
    #[serde(default)]
    pub mapped_ids: Option<(u64, u64)>,
}

pub use crate::runtime::Limit;

/// The part of `podman info --format json` read here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    host: InfoHost,
    store: InfoStore,
    version: InfoVersion,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InfoHost {
    security: InfoSecurity,
    #[serde(default)]
    cgroup_version: String,
    #[serde(default)]
    cgroup_manager: String,
    #[serde(default)]
    cgroup_controllers: Option<Vec<String>>,
    #[serde(default)]
    network_backend: String,
    #[serde(default)]
    id_mappings: Option<IdMappings>,
    #[serde(default)]
    remote_socket: Option<RemoteSocket>,
}

#[derive(Deserialize)]
struct RemoteSocket {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct IdMappings {
    #[serde(default)]
    uidmap: Option<Vec<IdMap>>,
    #[serde(default)]
    gidmap: Option<Vec<IdMap>>,
}

#[derive(Deserialize)]
struct IdMap {
    size: u64,
}

#[derive(Deserialize)]
struct InfoSecurity {
    rootless: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InfoStore {
    #[serde(default)]
    graph_driver_name: String,
    #[serde(default)]
    graph_root: String,
    #[serde(default)]
    run_root: String,
    #[serde(default)]
    volume_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InfoVersion {
    version: String,
}

/// Where `podman info --format json` says Podman records its events
/// (`file`, `journald`, `none`; empty when it does not say).
pub fn event_logger(json: &str) -> String {
    #[derive(Deserialize)]
    struct Info {
        host: InfoEvents,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct InfoEvents {
        #[serde(default)]
        event_logger: String,
    }
    serde_json::from_str::<Info>(json)
        .map(|i| i.host.event_logger)
        .unwrap_or_default()
}

impl Host {
    /// Parse `podman info --format json`.
    pub fn parse(json: &str) -> Result<Host, String> {
        let i: Info = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Ok(Host {
            version: i.version.version,
            rootless: i.host.security.rootless,
            cgroup_version: i.host.cgroup_version,
            cgroup_manager: i.host.cgroup_manager,
            cgroup_controllers: i.host.cgroup_controllers.unwrap_or_default(),
            network_backend: i.host.network_backend,
            storage_driver: i.store.graph_driver_name,
            graph_root: i.store.graph_root,
            run_root: i.store.run_root,
            volume_path: i.store.volume_path,
            socket: i.host.remote_socket.map(|r| r.path).unwrap_or_default(),
            mapped_ids: i.host.id_mappings.and_then(|m| {
                // Saturating: sizes summing past u64 panicked (debug) or
                // wrapped to a small count (release) (issue 17).
                let total = |v: Option<Vec<IdMap>>| {
                    v.map(|v| v.iter().fold(0u64, |sum, m| sum.saturating_add(m.size)))
                };
                Some((total(m.uidmap)?, total(m.gidmap)?))
            }),
        })
    }

    /// Why this Podman cannot run sessions as `session_uid`, for an exit 1
    /// at start; `None` when it can. Rootless sessions use
    /// `--userns=keep-id:uid=N,gid=N`, which needs Podman 4.3 or later and
    /// a user namespace holding ids 0..=N (the user and at least N
    /// subordinate ids).
    pub fn cannot_run_sessions(&self, session_uid: u32) -> Option<String> {
        if !self.rootless {
            return None;
        }
        let mut v = self
            .version
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().ok());
        let (major, minor) = (v.next().flatten(), v.next().flatten());
        if let (Some(major), Some(minor)) = (major, minor)
            && (major, minor) < (4, 3)
        {
            return Some(format!(
                "rootless Podman {} cannot map the session uid: agentd runs rootless sessions with `--userns=keep-id:uid={session_uid},gid={session_uid}`, which needs Podman 4.3 or later; hint: upgrade Podman, or run agentd rootful",
                self.version
            ));
        }
        let need = u64::from(session_uid) + 1;
        match self.mapped_ids {
            Some((uids, gids)) if uids < need || gids < need => Some(format!(
                "rootless Podman's user namespace holds {uids} uids and {gids} gids, too few to map the session uid {session_uid} (it needs {need} of each: the user and {session_uid} subordinate ids); hint: give the user a subordinate range of 65536 ids (`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`), then run `podman system migrate`; or pass a smaller --session-uid"
            )),
            _ => None,
        }
    }

    pub fn mode(&self) -> &'static str {
        if self.rootless { "rootless" } else { "rootful" }
    }

    /// Whether Podman would enforce `limit` for this user's containers.
    /// Rootless Podman on cgroup v1, or on v2 without the controller
    /// delegated, ignores the flag with a warning and runs unlimited.
    pub fn enforces(&self, limit: Limit) -> bool {
        if !self.rootless {
            return true;
        }
        self.cgroup_version == "v2"
            && self
                .cgroup_controllers
                .iter()
                .any(|c| c == limit.controller())
    }

    /// Why `limit` is not enforced here, for a `start_failed` message that
    /// names the field; `None` when it is.
    pub fn why_not_enforced(&self, limit: Limit) -> Option<String> {
        if self.enforces(limit) {
            return None;
        }
        let cause = if self.cgroup_version == "v2" {
            format!(
                "cgroups v2 here, but the `{}` controller is not delegated to this user",
                limit.controller()
            )
        } else {
            format!(
                "cgroups {} here, and rootless containers get no cgroup limits on cgroups v1",
                self.cgroup_version
            )
        };
        Some(format!(
            "{field}: rootless Podman on this host cannot enforce it ({cause}); it would run the session without the limit, so the session was not started; hint: run agentd on a cgroup v2 host that delegates the `{ctl}` controller to its user (systemd: a user@.service drop-in with `Delegate=cpu memory pids`), run agentd rootful, or remove `{field}` from the profile",
            field = limit.field(),
            ctl = limit.controller(),
        ))
    }

    /// One line for logs and `agentd status`: mode, cgroups, network,
    /// storage, and which profile limits are not enforced.
    pub fn summary(&self) -> String {
        let unenforced: Vec<&str> = Limit::ALL
            .iter()
            .filter(|l| !self.enforces(**l))
            .map(|l| l.field())
            .collect();
        let limits = if unenforced.is_empty() {
            "limits enforced".to_string()
        } else {
            format!(
                "limits NOT enforceable: {} (sessions of profiles that set them end start_failed)",
                unenforced.join(", ")
            )
        };
        format!(
            "{} Podman {}; cgroups {} ({}), {limits}; network backend {}; storage {}",
            self.mode(),
            self.version,
            self.cgroup_version,
            self.cgroup_manager,
            self.network_backend,
            self.storage_driver
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed `podman info --format json` of rootless Podman 4.3.1 on this
    /// project's CI machines (cgroup v1).
    const ROOTLESS_V1: &str = r#"{
      "host": {"arch": "amd64", "cgroupManager": "cgroupfs", "cgroupVersion": "v1",
               "cgroupControllers": [], "networkBackend": "netavark",
               "idMappings": {"gidmap": [{"container_id": 0, "host_id": 1001, "size": 1},
                                         {"container_id": 1, "host_id": 100000, "size": 65536}],
                              "uidmap": [{"container_id": 0, "host_id": 1001, "size": 1},
                                         {"container_id": 1, "host_id": 100000, "size": 65536}]},
               "remoteSocket": {"path": "/run/user/1001/podman/podman.sock"},
               "security": {"rootless": true, "seccompEnabled": true}},
      "store": {"graphDriverName": "overlay", "graphRoot": "/home/u/.local/share/containers/storage",
                "runRoot": "/run/user/1001/containers",
                "volumePath": "/home/u/.local/share/containers/storage/volumes"},
      "version": {"APIVersion": "4.3.1", "Version": "4.3.1"}
    }"#;

    const ROOTFUL_V1: &str = r#"{
      "host": {"cgroupManager": "cgroupfs", "cgroupVersion": "v1",
               "cgroupControllers": ["cpuset","cpu","cpuacct","blkio","memory","devices","freezer","pids"],
               "networkBackend": "netavark", "security": {"rootless": false}},
      "store": {"graphDriverName": "overlay"},
      "version": {"Version": "4.3.1"}
    }"#;

    fn rootless_v2(controllers: &[&str]) -> Host {
        Host {
            version: "4.9.3".into(),
            rootless: true,
            cgroup_version: "v2".into(),
            cgroup_manager: "systemd".into(),
            cgroup_controllers: controllers.iter().map(|c| c.to_string()).collect(),
            network_backend: "netavark".into(),
            storage_driver: "overlay".into(),
            graph_root: "/home/u/.local/share/containers/storage".into(),
            run_root: "/run/user/1001/containers".into(),
            volume_path: "/home/u/.local/share/containers/storage/volumes".into(),
            socket: "/run/user/1001/podman/podman.sock".into(),
            mapped_ids: Some((65537, 65537)),
        }
    }

    #[test]
    fn parses_the_facts_of_rootless_and_rootful_info() {
        let h = Host::parse(ROOTLESS_V1).expect("parse");
        assert!(h.rootless);
        assert_eq!(h.cgroup_version, "v1");
        assert_eq!(h.cgroup_manager, "cgroupfs");
        assert!(h.cgroup_controllers.is_empty());
        assert_eq!(h.network_backend, "netavark");
        assert_eq!(h.storage_driver, "overlay");
        assert_eq!(h.version, "4.3.1");
        assert_eq!(h.graph_root, "/home/u/.local/share/containers/storage");
        assert_eq!(h.run_root, "/run/user/1001/containers");
        assert_eq!(
            h.volume_path,
            "/home/u/.local/share/containers/storage/volumes"
        );
        assert_eq!(h.socket, "/run/user/1001/podman/podman.sock");
        assert_eq!(h.mapped_ids, Some((65537, 65537)));
        let r = Host::parse(ROOTFUL_V1).expect("parse");
        assert!(!r.rootless);
        // Fields an older or trimmed `podman info` lacks are empty.
        assert_eq!((r.run_root.as_str(), r.socket.as_str()), ("", ""));
        assert_eq!(r.cgroup_controllers.len(), 8);
    }

    #[test]
    fn a_podman_that_cannot_map_the_session_uid_is_named_at_start_issue_10() {
        let h = Host::parse(ROOTLESS_V1).expect("parse");
        assert_eq!(h.cannot_run_sessions(10_001), None);
        assert_eq!(
            Host::parse(ROOTFUL_V1)
                .expect("parse")
                .cannot_run_sessions(10_001),
            None
        );
        // A range too small for the session uid.
        let small = Host {
            mapped_ids: Some((5001, 65537)),
            ..h.clone()
        };
        let why = small.cannot_run_sessions(10_001).expect("too few ids");
        assert!(why.contains("holds 5001 uids"), "{why}");
        assert!(why.contains("usermod --add-subuids"), "{why}");
        assert_eq!(small.cannot_run_sessions(5000), None);
        // keep-id:uid= came with Podman 4.3.
        for old in ["4.2.1", "3.4.4"] {
            let o = Host {
                version: old.into(),
                ..h.clone()
            };
            let why = o.cannot_run_sessions(10_001).expect("too old");
            assert!(why.contains("needs Podman 4.3 or later"), "{why}");
        }
        let newer = Host {
            version: "5.0.0-dev".into(),
            ..h
        };
        assert_eq!(newer.cannot_run_sessions(10_001), None);
    }

    #[test]
    fn null_controllers_and_garbage_are_handled() {
        let h = Host::parse(&ROOTLESS_V1.replace("[]", "null")).expect("parse");
        assert!(h.cgroup_controllers.is_empty());
        assert!(Host::parse("not json").is_err());
        assert!(Host::parse("{}").is_err());
    }

    /// Id map sizes that sum past u64 (a broken or hostile `podman info`)
    /// panicked with an overflow in debug builds and wrapped to a tiny
    /// count in release; now they saturate.
    #[test]
    fn id_map_sizes_summing_past_u64_saturate_issue_17() {
        let huge = ROOTLESS_V1.replace("\"size\": 65536", &format!("\"size\": {}", u64::MAX));
        let h = Host::parse(&huge).expect("parse");
        assert_eq!(h.mapped_ids, Some((u64::MAX, u64::MAX)));
        assert_eq!(h.cannot_run_sessions(10_001), None);
    }

    #[test]
    fn rootful_enforces_every_limit() {
        let h = Host::parse(ROOTFUL_V1).expect("parse");
        for l in Limit::ALL {
            assert!(h.enforces(l));
            assert_eq!(h.why_not_enforced(l), None);
        }
        assert!(h.summary().contains("limits enforced"), "{}", h.summary());
    }

    #[test]
    fn rootless_cgroup_v1_enforces_no_limit_and_says_which_field() {
        let h = Host::parse(ROOTLESS_V1).expect("parse");
        for l in Limit::ALL {
            let msg = h.why_not_enforced(l).expect("not enforced");
            assert!(msg.starts_with(&format!("{}:", l.field())), "{msg}");
            assert!(msg.contains("cgroups v1"), "{msg}");
            assert!(msg.contains("Delegate="), "{msg}");
        }
        let s = h.summary();
        assert!(
            s.starts_with("rootless Podman 4.3.1; cgroups v1 (cgroupfs)"),
            "{s}"
        );
        assert!(s.contains("memory, cpus, pids_limit"), "{s}");
        assert!(s.contains("network backend netavark"), "{s}");
    }

    #[test]
    fn rootless_cgroup_v2_enforces_exactly_the_delegated_controllers() {
        let h = rootless_v2(&["memory", "pids"]);
        assert!(h.enforces(Limit::Memory));
        assert!(h.enforces(Limit::PidsLimit));
        assert!(!h.enforces(Limit::Cpus));
        let msg = h.why_not_enforced(Limit::Cpus).expect("cpu not delegated");
        assert!(msg.contains("`cpu` controller is not delegated"), "{msg}");
        assert!(
            h.summary().contains("NOT enforceable: cpus "),
            "{}",
            h.summary()
        );
        let all = rootless_v2(&["cpuset", "cpu", "io", "memory", "pids"]);
        assert!(Limit::ALL.iter().all(|l| all.enforces(*l)));
    }

    #[test]
    fn the_event_logger_is_read_from_podman_info_issue_18() {
        assert_eq!(
            super::event_logger(r#"{"host":{"eventLogger":"file","security":{"rootless":false}}}"#),
            "file"
        );
        assert_eq!(super::event_logger(ROOTFUL_V1), "");
        assert_eq!(super::event_logger("garbage"), "");
    }
}
