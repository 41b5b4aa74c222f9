#!/usr/bin/env python3
"""Holds listening sockets the way systemd does for a socket unit, and runs a service on them.

usage: socket_activate.py PIDFILE NAME=HOST:PORT... -- COMMAND...

Binds every address (the sockets live as long as this process), and starts COMMAND with them
at fds 3, 4, ... and LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set, as systemd does. Whenever
COMMAND exits, however it exits (SIGTERM, SIGKILL), it is started again at once on the same
sockets (systemd's Restart=always), so connections wait in the sockets' backlog meanwhile.
The running COMMAND's pid is written to PIDFILE. SIGTERM to this process stops COMMAND and
ends it.
"""

import os
import signal
import socket
import subprocess
import sys


def main():
    args = sys.argv[1:]
    split = args.index("--")
    pidfile, specs, command = args[0], args[1:split], args[split + 1 :]
    names, sockets = [], []
    for spec in specs:
        name, addr = spec.split("=", 1)
        host, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(1024)
        names.append(name)
        sockets.append(s)
    # the sockets at 3, 4, ... exactly, as sd_listen_fds(3) expects
    high = [os.dup(s.fileno()) for s in sockets]
    for s in sockets:
        s.close()
    fds = []
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
        fds.append(3 + i)
    env = dict(os.environ)
    env["LISTEN_FDS"] = str(len(fds))
    env["LISTEN_FDNAMES"] = ":".join(names)
    stopping = False
    child = None

    def stop(_sig, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        # LISTEN_PID is the service's own pid: the shell sets it and execs into COMMAND
        child = subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *command],
            env=env,
            pass_fds=fds,
        )
        tmp = pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{child.pid}\n")
        os.replace(tmp, pidfile)
        while True:
            try:
                child.wait()
                break
            except InterruptedError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
