"""localml's process 1 inside a deployment container (standard library only, Python 3.8+).

It runs the inference server as a child process and keeps the container alive around it:

- SIGHUP: end the server and start a fresh one. A new process imports the scoring script and
  every helper module anew and runs init() again: a code or model edit is live without
  rebuilding the image or recreating the container.
- The server exiting (init() raising, a crash) does not end the container: the status file says
  so, and the next SIGHUP starts it again.
- SIGTERM / SIGINT: stop the server and exit (docker stop).

It talks to the host through files in RUNTIME_DIR (a folder shared with the host):
- command.json, written by the host before a start or reload: {"argv": [...], "env": {...}}
  (so switching the debugger on or off is a reload, not a new container);
- status.json, written here atomically: {"container", "supervisor" (its pid), "generation",
  "state": "running" | "exited",
  "pid", "exit_code", "argv", "env", "started_at", "changed_at"}.

Usage: supervisor.py RUNTIME_DIR
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

STOP_GRACE_S = 10.0


def log(message):
    sys.stdout.write(f"localml-supervisor: {message}\n")
    sys.stdout.flush()


class Supervisor:
    def __init__(self, runtime_dir):
        self.status_file = os.path.join(runtime_dir, "status.json")
        self.command_file = os.path.join(runtime_dir, "command.json")
        self.command = {"argv": [], "env": {}}
        self.child = None
        self.generation = 0
        self.started_at = 0.0
        self.reload_requested = False
        self.stop_requested = False

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
        }
        tmp = self.status_file + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(status, handle)
        os.replace(tmp, self.status_file)

    def start(self):
        with open(self.command_file) as handle:
            self.command = json.load(handle)
        self.generation += 1
        self.started_at = time.time()
        env = dict(os.environ, **self.command["env"])
        # a session of its own, so stopping it reaches gunicorn's workers too
        self.child = subprocess.Popen(self.command["argv"], env=env, start_new_session=True)
        log(f"server started (generation {self.generation}, pid {self.child.pid}): {' '.join(self.command['argv'])}")
        self.write_status("running")

    def stop(self, graceful):
        """graceful: SIGTERM and a grace period (docker stop). Otherwise (a reload) SIGKILL the
        server's whole session at once: a reload is for an edit loop, and gunicorn's graceful
        shutdown alone costs about a second; an in-flight request is dropped."""
        if self.child is None or self.child.poll() is not None:
            return
        try:
            os.killpg(self.child.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (STOP_GRACE_S if graceful else 5.0)
        while self.child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()
        # end anything the server left in its session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGKILL)

    def run(self):
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self.start()
        reported_exit = False
        while True:
            if self.stop_requested:
                self.stop(graceful=True)
                log("stopped")
                return 0
            if self.reload_requested:
                self.reload_requested = False
                log("reload requested: restarting the server")
                self.stop(graceful=False)
                self.start()
                reported_exit = False
            code = self.child.poll()
            if code is not None and not reported_exit:
                # gunicorn's workers would outlive a killed master and keep the port: end them too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.child.pid, signal.SIGKILL)
                log(f"server exited with code {code} (generation {self.generation}); waiting for a reload")
                self.write_status("exited", exit_code=code)
                reported_exit = True
            self._reap_orphans()
            time.sleep(0.05)

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
