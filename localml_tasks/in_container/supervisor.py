"""localml's process 1 inside a deployment container (standard library only, Python 3.8+).

It runs the inference server as a child process and keeps the container alive around it:

- SIGHUP: bring the server up to date with command.json. When the command is the one running, the
  server reloads in place: localml's debug server gets SIGUSR1 (it loads the scoring script again in
  its own process, and the debugger stays attached); azmlinfsrv under gunicorn gets SIGHUP (gunicorn
  starts new workers on the same listening socket and lets the old ones finish). When the command
  changed (debugger on or off, wait=1), the server has exited, or the host asks for a restart, a new
  server process is started, after the old one and its debugpy adapter have ended.
- The server exiting (a crash) does not end the container: the status file says so, and the next
  SIGHUP starts it again. Exit code 75 is the debug server asking for a new process (a compiled
  extension changed): it gets one at once.
- SIGTERM / SIGINT: stop the server and exit (docker stop).

It talks to the host through files in RUNTIME_DIR (a folder shared with the host):
- command.json, written by the host: {"argv": [...], "env": {...}, "reload": "debug-server" | "gunicorn",
  "restart": n (a new value asks for a new process), "settings": {...} (read by the server itself)};
- status.json, written here atomically: {"container", "supervisor" (its pid), "generation",
  "state": "running" | "exited", "pid", "exit_code", "argv", "env", "started_at", "changed_at", "why"};
- reload.json: the outcome of the latest load of the scoring script (the debug server writes it; for
  gunicorn this supervisor does, once the old workers are gone).

Usage: supervisor.py RUNTIME_DIR
"""

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

STOP_GRACE_S = 10.0
RESTART_EXIT_CODE = 75  # the debug server's "I need a new process"
GUNICORN_RELOAD_LIMIT_S = 120.0  # old workers finishing their requests


def log(message):
    sys.stdout.write(f"localml-supervisor: {message}\n")
    sys.stdout.flush()


def _children(pid):
    """Direct children of pid, from /proc."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        fields = handle.read().rsplit(") ", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[1]) == pid and fields[0] != "Z":
                    found.append(int(entry))
    return found


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _debugpy_adapters(debug_port):
    """debugpy's adapter processes for a server listening on debug_port. The adapter daemonizes itself,
    so it is neither the server's child nor in its session: it is known by its command line."""
    if not debug_port:
        return []
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                argv = _cmdline(int(entry))
                if b"--for-server" in argv and any(b"debugpy" in part for part in argv):
                    with contextlib.suppress(ValueError, IndexError):
                        if argv[argv.index(b"--port") + 1] == str(debug_port).encode():
                            found.append(int(entry))
    return found


class Supervisor:
    def __init__(self, runtime_dir):
        self.runtime_dir = runtime_dir
        self.status_file = os.path.join(runtime_dir, "status.json")
        self.command_file = os.path.join(runtime_dir, "command.json")
        self.reload_file = os.path.join(runtime_dir, "reload.json")
        self.command = {"argv": [], "env": {}}
        self.child = None
        self.generation = 0
        self.started_at = 0.0
        self.why = "started"
        self.exit_reported = False
        self.reload_requested = False
        self.forward_pending = False  # a reload asked for before the debug server could take it
        self.stop_requested = False
        self.gunicorn_reload = None  # (old worker pids, when) while gunicorn replaces its workers
        self.gunicorn_serial = 0

    def read_command(self):
        with open(self.command_file) as handle:
            return json.load(handle)

    def write_status(self, state, exit_code=None):
        status = {
            "container": socket.gethostname(),
            "supervisor": os.getpid(),
            "generation": self.generation,
            "state": state,
            "pid": self.child.pid if self.child else None,
            "exit_code": exit_code,
            "argv": self.command["argv"],
            "env": self.command["env"],
            "started_at": self.started_at,
            "changed_at": time.time(),
            "why": self.why,
        }
        self._write_json(self.status_file, status)

    def _write_json(self, path, data):
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)

    def start(self, why):
        self.command = self.read_command()
        self.generation += 1
        self.started_at = time.time()
        self.why = why
        self.exit_reported = False
        self.forward_pending = False
        self.gunicorn_reload = None
        env = dict(os.environ, **self.command["env"])
        # a session of its own, so stopping it reaches gunicorn's workers too
        self.child = subprocess.Popen(self.command["argv"], env=env, start_new_session=True)
        log(f"server started (generation {self.generation}, pid {self.child.pid}, {why}): "
            f"{' '.join(self.command['argv'])}")
        self.write_status("running")

    def debug_port(self):
        return (self.command.get("env") or {}).get("LOCALML_DEBUG_PORT")

    def stop(self, graceful):
        """End the server, everything in its session, and its debugpy adapter (which would keep the debug
        port, and the debugger's connection, after the server is gone). graceful: SIGTERM and a grace
        period (docker stop); otherwise SIGKILL at once: a restart is for an edit loop."""
        if self.child is None:
            return
        adapters = _debugpy_adapters(self.debug_port())
        if self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            deadline = time.monotonic() + (STOP_GRACE_S if graceful else 5.0)
            while self.child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()
        # end anything the server left in its session, and the adapter
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGKILL)
        for pid in adapters + _debugpy_adapters(self.debug_port()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(_alive(pid) for pid in adapters) and time.monotonic() < deadline:
            self._reap_orphans()
            time.sleep(0.02)

    def on_reload(self):
        """SIGHUP: in place when the same command runs, a new process otherwise."""
        try:
            wanted = self.read_command()
        except (OSError, ValueError) as exc:
            log(f"cannot read {self.command_file}: {exc}")
            return
        running = self.child is not None and self.child.poll() is None
        if not running:
            why = f"it had exited with code {self.child.returncode}" if self.child else "it was not running"
        elif (wanted.get("argv"), wanted.get("env")) != (self.command.get("argv"), self.command.get("env")):
            why = "its command changed"
        elif wanted.get("restart") != self.command.get("restart"):
            why = "a restart was asked for"
        else:
            self.reload_in_place(wanted.get("reload"))
            return
        log(f"starting a new server process: {why}")
        self.stop(graceful=False)
        self.start(why)

    def reload_in_place(self, how):
        if how == "gunicorn":
            workers = _children(self.child.pid)
            self.gunicorn_reload = (workers, time.time())
            log(f"reloading in place: gunicorn replaces its workers {workers}")
            os.kill(self.child.pid, signal.SIGHUP)
        elif self._debug_server_ready():
            os.kill(self.child.pid, signal.SIGUSR1)
        else:
            self.forward_pending = True  # it is still starting: forwarded once its first load is done

    def _debug_server_ready(self):
        try:
            with open(self.reload_file) as handle:
                return json.load(handle).get("pid") == self.child.pid
        except (OSError, ValueError):
            return False

    def check_gunicorn_reload(self):
        """gunicorn's reload is done when every old worker has gone: from then on, only new code answers."""
        old_workers, since = self.gunicorn_reload
        if any(_alive(pid) for pid in old_workers) and time.time() - since < GUNICORN_RELOAD_LIMIT_S:
            return
        self.gunicorn_reload = None
        self.gunicorn_serial += 1
        self._write_json(self.reload_file, {"pid": self.child.pid, "serial": self.gunicorn_serial,
                                            "outcome": "loaded", "started_at": since,
                                            "took_ms": round((time.time() - since) * 1000, 1),
                                            "init": {"ran": True, "why": "gunicorn started new workers"}})

    def run(self):
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        # a signal wakes the loop at once (its handler only sets a flag)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.start("started")
        while True:
            with contextlib.suppress(InterruptedError):
                select.select([wake_read], [], [], 0.25)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 512)
            if self.stop_requested:
                self.stop(graceful=True)
                log("stopped")
                return 0
            if self.reload_requested:
                self.reload_requested = False
                self.on_reload()
            code = self.child.poll()
            if code == RESTART_EXIT_CODE:
                self.stop(graceful=False)
                self.start("a compiled extension in the code folder changed")
            elif code is not None and not self.exit_reported:
                self.stop(graceful=False)  # gunicorn's workers and the adapter would keep the ports
                log(f"server exited with code {code} (generation {self.generation}); waiting for a reload")
                self.write_status("exited", exit_code=code)
                self.exit_reported = True
            elif code is None and self.forward_pending and self._debug_server_ready():
                self.forward_pending = False
                os.kill(self.child.pid, signal.SIGUSR1)
            if self.gunicorn_reload and code is None:
                self.check_gunicorn_reload()
            self._reap_orphans()

    def _reap_orphans(self):
        # as process 1 we inherit orphaned grandchildren: collect them so none stays a zombie
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid and self.child.returncode is None:
                # reaped here before Popen saw it: keep its exit code for poll()
                if os.WIFEXITED(status):
                    self.child.returncode = os.WEXITSTATUS(status)
                else:
                    self.child.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else 1

    def _on_reload(self, signum, frame):
        self.reload_requested = True

    def _on_stop(self, signum, frame):
        self.stop_requested = True


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: supervisor.py RUNTIME_DIR\n")
        return 2
    return Supervisor(argv[1]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
