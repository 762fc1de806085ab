"""The deployment a command works on: named by spec= (and the overrides), or the one last used in this folder.

tasks.py builds one Target per command; the spec behind it is parsed once (`Target.loaded`) and what the
validate stage wrote is read back by the later stages (`Target.resolved`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import runtime
from .errors import LocalmlError
from .overrides import Overrides
from .spec import Deployment, load_deployment, peek_names
from .state import current_file, deployment_dir, read_json

# the checked Deployment per target, for one command (each command is its own process; `doit watch` runs a
# new one per round): built once however many stages ask. yamlsource caches the files' parses beneath it
# (names are peeked from them too); this caches the schema checks and overrides on top.
_LOADED: dict[Target, Deployment | LocalmlError] = {}


@dataclass(frozen=True)
class Target:
    """One deployment as named on the command line (names peeked before validation)."""

    spec_path: Path
    endpoint: str
    deployment: str
    endpoint_yaml: Path | None = None
    # set=, endpoint_name=, deployment= as given (the names above include them)
    overrides: Overrides = field(default_factory=Overrides)

    @property
    def state_dir(self) -> Path:
        return deployment_dir(self.endpoint, self.deployment)

    @property
    def build_dir(self) -> Path:
        return self.state_dir / "build"

    @property
    def runtime_dir(self) -> Path:
        """Shared with the server's supervisor (its status file)."""
        return self.state_dir / "runtime"

    @property
    def launch_file(self) -> Path:
        """The launch configuration for VS Code on the host."""
        return self.state_dir / "launch.json"

    @property
    def resolved_file(self) -> Path:
        return self.state_dir / "deployment.json"

    def loaded(self) -> Deployment:
        """The spec read, overridden and checked, once per command (the error too, raised each time asked)."""
        if self not in _LOADED:
            try:
                _LOADED[self] = load_deployment(self.spec_path, self.endpoint_yaml, self.overrides.parse())
            except LocalmlError as exc:
                _LOADED[self] = exc
        result = _LOADED[self]
        if isinstance(result, LocalmlError):
            raise result
        return result

    def resolved(self) -> Deployment:
        """The deployment as the validate stage wrote it (deployment.json)."""
        data = read_json(self.resolved_file)
        if data is None:
            raise LocalmlError.one("the deployment has not been validated yet",
                                   fix=f"run doit debug spec={self.spec_path}")
        return Deployment.from_json(data)

    def with_deployment(self, name: str) -> Target:
        """Another deployment of the same endpoint (the one that answered a request)."""
        return Target(self.spec_path, self.endpoint, name)


def debug_command(spec: str, endpoint_name: str, deployment_name: str) -> str:
    """`doit debug spec=...` for this deployment of this endpoint: the names its YAML does not give itself
    are added as overrides."""
    own_endpoint, own_deployment = peek_names(Path(spec))
    words = [f"doit debug spec={spec}"]
    if own_endpoint != endpoint_name:
        words.append(f"endpoint_name={endpoint_name}")
    if own_deployment != deployment_name:
        words.append(f"deployment={deployment_name}")
    return " ".join(words)


def start_hint(target: Target) -> str:
    """How to start (or fix and restart) the target's endpoint, with that endpoint's own spec: never the spec
    remembered in .localml/current.json for another endpoint."""
    remembered = read_json(current_file()) or {}
    if remembered.get("endpoint") == target.endpoint or peek_names(target.spec_path)[0] == target.endpoint:
        return " ".join([f"doit debug spec={target.spec_path}", *target.overrides.argv()])
    known: list[tuple[str, str]] = []  # (spec, deployment) of the endpoint: this folder's records, then labels
    folder = target.state_dir.parent
    for resolved in sorted(folder.glob("*/deployment.json")) if folder.is_dir() else []:
        data = read_json(resolved) or {}
        if data.get("spec_path") and data.get("endpoint_name") == target.endpoint:
            known.append((data["spec_path"], data.get("deployment_name") or resolved.parent.name))
    if not known:
        known = [(d["spec"], d["name"]) for d in runtime.describe_endpoint(target.endpoint)
                 if d.get("spec") and d.get("container")]
    if not known:
        return "doit debug spec=<its deployment YAML>"
    spec, name = next((item for item in known if item[1] == target.deployment), known[0])
    return debug_command(spec, target.endpoint, name)
