//! The egress listener placed in a real container's network namespace
//! (issue 19), standalone: `podman run --network none`, then
//! `egress::netns::listen_in` with the mode this test runs in (rootful: a
//! thread that enters the namespace; rootless, in scripts/test's second
//! pass: the agentd binary re-executed as the helper). Only 127.0.0.1 is
//! ever used, on both sides.

use std::io::{Read, Write};
use std::process::Command;

use agentd::{Placement, listen_in};
use assert_cmd::cargo::cargo_bin;

use crate::util::{require_podman, running_rootless, test_image};

/// A container that is removed when the test ends, however it ends.
struct Container(String);

impl Container {
    fn start() -> Container {
        let name = format!("agentd-egress-netns-{}", std::process::id());
        let out = Command::new("podman")
            .args(["run", "-d", "--rm", "--network", "none", "--name", &name])
            .arg(test_image())
            .args(["sleep", "300"])
            .output()
            .expect("podman run");
        assert!(
            out.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container(name)
    }

    fn pid(&self) -> u32 {
        let out = Command::new("podman")
            .args(["inspect", "-f", "{{.State.Pid}}", &self.0])
            .output()
            .expect("inspect");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Run bash inside; its output and whether it succeeded.
    fn bash(&self, script: &str) -> (bool, String) {
        let out = Command::new("podman")
            .args(["exec", &self.0, "bash", "-c", script])
            .output()
            .expect("podman exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}

fn placement() -> Placement {
    if running_rootless() {
        Placement::Helper(cargo_bin("agentd"))
    } else {
        Placement::Thread
    }
}

#[test]
fn a_socket_placed_in_a_container_namespace_serves_that_namespace_only_issue_19() {
    if !require_podman() {
        return;
    }
    let c = Container::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A port held on the host's loopback: the container's loopback is its
    // own, so the same port is free there, and the host's is out of reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").expect("host bind");
    let port = host.local_addr().expect("addr").port();
    let listener = rt
        .block_on(listen_in(c.pid(), port, &placement()))
        .expect("placed in the container's namespace");
    let served = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(b"hello from the daemon\n").expect("write");
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        (listener, got)
    });
    let (ok, out) = c.bash(&format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && head -n1 <&3 && echo bye >&3"
    ));
    assert!(ok, "the container reaches its listener");
    assert_eq!(out, "hello from the daemon\n");
    let (listener, got) = served.join().expect("server");
    assert_eq!(got, "bye\n");
    // Nothing else reaches the host: no route, and the host's own listener
    // on the same port is not the container's 127.0.0.1.
    let (_, routes) = c.bash("tail -n +2 /proc/net/route");
    assert_eq!(routes, "", "no route out of the container");
    drop(host);
    // Held by us, the port is taken for a second placement: fail closed.
    let again = rt.block_on(listen_in(c.pid(), port, &placement()));
    assert!(
        again.as_ref().is_err_and(|e| e.is_port_taken()),
        "{again:?}"
    );
    drop(listener);
    // A pid in the daemon's own namespace is never used.
    let own = rt.block_on(listen_in(std::process::id(), port, &placement()));
    assert!(own.is_err_and(|e| e.to_string().contains("own network namespace")));
}
