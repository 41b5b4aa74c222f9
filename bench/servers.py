#!/usr/bin/env python3
"""Several servers, figures printed (never asserted):

1. deploy time over 1, 2 and 3 hosts for the same release: the host steps (`hosts` through
   `finish`), the build excluded, so the slope is ferry's overhead per host;
2. bytes sent per host (the ship step's `bytes_sent=`) for a release already there (0), and
   for one that changed one small file against the release the hosts have.

Hosts are network namespaces made here, each with a veth pair on 10.202.<n>.0/30, a user of
its own and a real sshd (Debian's openssh-server), as tests/support/hosts.rs makes them. Needs
root, `ip netns` and sshd. Usage: python3 bench/servers.py [runs]   (FERRY=path/to/ferry:
the binary to use, default target/release/ferry if built, else target/debug/ferry). Everything
is removed at the end.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, api, free_port, sample_repo, start_serve, ts

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
HOSTS = 3
TAG = f"{os.getpid() % 1000}"


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)






class Host:
    def __init__(self, tmp, n, client_pub, known):
        self.n, self.ns = n, f"ferry-bench{TAG}-{n}"
        self.veth, self.peer = f"fb{TAG}a{n}", f"fb{TAG}b{n}"
        self.addr = f"10.202.{n}.2"
        self.user = f"fbench{TAG}x{n}"
        self.dir = os.path.join(tmp, f"host{n}")
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)
        os.chmod(self.dir, 0o755)
        self.sshd = None
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        run("ip", "link", "set", self.peer, "netns", self.ns)
        run("ip", "addr", "add", f"10.202.{n}.1/30", "dev", self.veth)
        run("ip", "link", "set", self.veth, "up")
        ns = ["ip", "netns", "exec", self.ns]
        run(*ns, "ip", "addr", "add", f"{self.addr}/30", "dev", self.peer)
        run(*ns, "ip", "link", "set", self.peer, "up")
        run(*ns, "ip", "link", "set", "lo", "up")
        run("useradd", "-M", "-U", "-d", self.home, "-s", "/bin/sh", "-p", "*", self.user)
        shutil.chown(self.home, self.user, self.user)
        key = os.path.join(self.dir, "host_ed25519")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.ns, "-f", key)
        auth = os.path.join(self.dir, "authorized_keys")
        shutil.copy(client_pub, auth)
        os.chmod(auth, 0o644)
        with open(known, "a") as f:
            f.write(f"{self.addr} {open(key + '.pub').read().strip()}\n")
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(f"ListenAddress {self.addr}:22\nHostKey {key}\nAuthorizedKeysFile {auth}\n"
                    f"AllowUsers {self.user}\nStrictModes no\nUsePAM no\nPidFile none\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "PubkeyAuthentication yes\nPermitRootLogin no\nMaxSessions 64\nMaxStartups 64\n")
        os.makedirs("/run/sshd", exist_ok=True)
        self.sshd = subprocess.Popen([*ns, "/usr/sbin/sshd", "-D", "-e", "-f", config],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "sshd.log"), "w"))
        time.sleep(0.3)

    def remove(self):
        if self.sshd:
            self.sshd.kill()
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["userdel", "-f", "-r", self.user], capture_output=True)


def host_steps_seconds(detail):
    steps = detail["steps"]
    start = next(s for s in steps if s["name"] == "hosts")["started_at"]
    end = next(s for s in steps if s["name"] == "finish")["finished_at"]
    return ts(end) - ts(start)


def bytes_sent(detail):
    out = {}
    for s in detail["steps"]:
        if s["name"].startswith("ship "):
            m = re.search(r"bytes_sent=(\d+)", s["output"])
            out[s["name"][5:]] = int(m.group(1)) if m else None
    return out


def deploy(base, env, ref):
    d = api(base, "/api/deployments", {"environment": env, "ref": ref})
    if "id" not in d:
        sys.exit(f"deploy {env} {ref}: {d}")
    while True:
        detail = api(base, f"/api/deployments/{d['id']}")
        if detail["deployment"]["state"] not in ("queued", "running", "monitoring"):
            if detail["deployment"]["state"] != "succeeded":
                sys.exit(f"deploy {env} {ref}: {detail['deployment']['state']}: {detail['deployment']['reason']}")
            return detail
        time.sleep(0.1)


def main():
    if os.geteuid() != 0 or not shutil.which("ip") or not os.path.exists("/usr/sbin/sshd"):
        sys.exit("needs root, iproute2 and openssh-server")
    ferry = os.environ.get("FERRY") or next(
        p for p in (os.path.join(ROOT, "target", "release", "ferry"), os.path.join(ROOT, "target", "debug", "ferry"))
        if os.path.exists(p))
    tmp = tempfile.mkdtemp(prefix="ferry-bench-servers-")
    hosts = []
    serve = None
    try:
        repo = sample_repo(tmp, [("v1.0.0", "health_status = 200\n"), ("v1.1.0", "health_status = 200\nmessage = hi\n"),
                                 ("v1.2.0", "health_status = 200\nmessage = changed\n")])
        client = os.path.join(tmp, "id_ed25519")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", client)
        known = os.path.join(tmp, "known_hosts")
        open(known, "w").close()
        hosts = [Host(tmp, n, client + ".pub", known) for n in range(1, HOSTS + 1)]
        api_port = free_port()
        envs = ""
        for n in range(1, HOSTS + 1):
            servers = ", ".join(f'"{h.user}@{h.addr}"' for h in hosts[:n])
            envs += f'[environments.on{n}]\nlisten = "0.0.0.0:{8080 + n}"\nservers = [{servers}]\n\n'
        config = os.path.join(tmp, "ferry.toml")
        with open(config, "w") as f:
            f.write(f'[app]\nname = "sample"\nrepo = "repo"\nstart = "\'{ferry}\' sample-app"\n'
                    'stop_timeout = "2s"\ndrain_timeout = "1s"\n\n'
                    '[health]\npaths = ["/health"]\ninterval = "100ms"\ntimeout = "1s"\nretries = 30\n\n'
                    f'{envs}[server]\nlisten = "127.0.0.1:{api_port}"\n\n'
                    f'[ssh]\nidentity_file = "{client}"\nknown_hosts = "{known}"\nconnect_timeout = "5s"\n')
        serve, base, _token = start_serve(ferry, tmp, config, api_port)
        print(f"ferry: {ferry}")
        # warm: the agent installed on every host, v1.0.0 serving
        for n in range(1, HOSTS + 1):
            deploy(base, f"on{n}", "v1.0.0")
            deploy(base, f"on{n}", "v1.1.0")
        times = {n: [] for n in range(1, HOSTS + 1)}
        refs = ["v1.0.0", "v1.1.0"]
        for r in range(RUNS):
            for n in range(1, HOSTS + 1):
                # both releases are on every host already: nothing is shipped
                detail = deploy(base, f"on{n}", refs[r % 2])
                times[n].append(host_steps_seconds(detail))
        print("\n1. host steps (hosts .. finish) per deploy of a release the hosts have, "
              f"median of {RUNS}:")
        med = {n: statistics.median(t) for n, t in times.items()}
        for n in range(1, HOSTS + 1):
            print(f"   {n} host(s): {med[n]:.3f} s   (runs: {', '.join(f'{t:.3f}' for t in times[n])})")
        per_host = (med[HOSTS] - med[1]) / (HOSTS - 1)
        print(f"   per host added: {per_host:.3f} s (max_parallel = 1: start, health, switch, stop in turn)")
        same = deploy(base, f"on{HOSTS}", refs[RUNS % 2])
        changed = deploy(base, f"on{HOSTS}", "v1.2.0")
        print("\n2. bytes sent per host:")
        print(f"   a release already there: {bytes_sent(same)}")
        print(f"   v1.2.0 (app.conf changed) over v1.1.0 there: {bytes_sent(changed)}")
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                   os.walk(os.path.join(tmp, ".ferry", "environments", f"on{HOSTS}", "releases", changed["deployment"]["release"]))
                   for f in fs)
        print(f"   (the release's files add up to {size} bytes)")
    finally:
        if serve:
            serve.terminate()
            serve.wait()
        for h in hosts:
            h.remove()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
