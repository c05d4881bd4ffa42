"""Shared by scripts/bench and scripts/chaos: run the calling script again as
the rootless test user that scripts/setup-podman prepares, so agentd drives
that user's rootless Podman (issue 10).

Copies of the script, this module and the agentd binary go to a temp folder
the user can read (a checkout under /root is out of its reach); the user
gets a login-like environment and XDG_RUNTIME_DIR.
"""
import os
import pwd
import shutil
import subprocess
import sys
import tempfile


def remove_tree(path):
    """`shutil.rmtree` that also removes sealed audit records: their folders
    are read-only, and for anyone but root that keeps their entries (the
    rootless runs left their temp folders behind)."""
    def writable_then_again(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=writable_then_again)


def rerun_as_test_user(script, argv, agentd, image):
    """Run `script --agentd <copy of agentd> ARGV` as the test user; its exit code."""
    name = os.environ.get("AGENTD_ROOTLESS_USER", "agentd-rootless")
    try:
        u = pwd.getpwnam(name)
    except KeyError:
        sys.exit(f"no user {name}: run scripts/setup-podman first")
    tmp = tempfile.mkdtemp(prefix="agentd-rootless-")
    try:
        os.chmod(tmp, 0o755)
        copy = os.path.join(tmp, os.path.basename(script))
        shutil.copy(script, copy)
        shutil.copy(os.path.abspath(__file__), os.path.join(tmp, "rootless.py"))
        shutil.copy(agentd, os.path.join(tmp, "agentd"))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": u.pw_dir, "USER": name,
               "XDG_RUNTIME_DIR": f"/run/user/{u.pw_uid}", "AGENTD_TEST_IMAGE": image}
        cmd = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups", "--",
               sys.executable, copy, "--agentd", os.path.join(tmp, "agentd")] + argv
        return subprocess.run(cmd, env=env, cwd="/").returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
