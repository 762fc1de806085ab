"""The commands around a running endpoint: invoke, show, logs, delete, endpoints and prune. No doit in here.

What runs, and its true state, comes from runtime.py; the endpoint's address is its router (endpoint.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.syntax import Syntax

from . import claims, disk, health, image, invoke, lifecycle, ownership, runtime, server
from . import endpoint as endpoint_stage
from .console import display, line, out, says
from .errors import LocalmlError
from .router_server import ROUTER_ANSWER
from .state import STATE_DIR_NAME, read_json, state_root
from .target import Target, debug_command, start_hint


def invoke_endpoint(target: Target, asked: invoke.Asked) -> None:
    """Send the request to the endpoint's address: routed by traffic, or to the deployment named (deployment=)."""
    prepared = invoke.prepare(asked)  # every problem with the files or variables before anything is sent
    router = endpoint_stage.find_router(target.endpoint)
    if router is None:
        known = runtime.describe_endpoint(target.endpoint)
        why = lifecycle.endpoint_reason(known) if known else None
        raise LocalmlError.one(f"local endpoint {target.endpoint} is not running" + (f" ({why})" if why else ""),
                               fix=f"start it: {start_hint(target)}")
    url = router.scoring_uri
    timeout_s = max(target.resolved().request_timeout_ms / 1000 * 2, 30) if target.resolved_file.exists() else 60
    sent_at = time.time()
    result = invoke.post(url, prepared.payload, timeout_s=timeout_s, headers=prepared.headers)
    answered = result.deployment
    if result.script_failed and answered:
        answering = target.with_deployment(answered)
        load = server.read_load(answering.runtime_dir)
        if load and load.outcome == "failed":
            conda_file = (read_json(answering.resolved_file) or {}).get("conda_file")
            raise health.script_failure(load, conda_file, f"deployment {answered} answered {result.status}")
    own = _router_error(result)
    if own is not None:  # the router's own answer, not a deployment's: its log has nothing to add
        raise LocalmlError.one(f"the endpoint's router answered {result.status}: {own.get('error')}",
                               fix=own.get("fix") or "doit endpoints lists the local deployments and their state")
    if not 200 <= result.status < 300:
        # the server answers "check the logs": we do, and show the traceback through run()
        deployed = runtime.find(target.endpoint, answered) if answered else None
        cause = health.extract_cause(deployed.read_log(sent_at - 1), deployed.path_map) if deployed else None
        raise invoke.error_for(result, url, cause, answered)
    how = "named" if prepared.named else "by traffic"
    line("invoke", f"{result.status} from {answered} ({how}) in {result.latency_ms:.0f} ms")
    if prepared.output:
        invoke.save(prepared.output, result.content)
        line("invoke", f"saved the answer ({result.status}, {result.content_type or 'no Content-Type'}, "
                       f"{len(result.content):,} bytes) to {display(prepared.output)}")
        return
    _show_answer(result.answer)


def _router_error(result: invoke.InvokeResult) -> dict[str, Any] | None:
    """The router's own error answer (no deployment for the name, none running, one not answering), if it is one."""
    value = result.answer.value if result.status >= 400 else None
    return value if isinstance(value, dict) and value.get("answered_by") == ROUTER_ANSWER else None


def _show_answer(answer: invoke.Answer) -> None:
    """JSON pretty-printed, text as it is; a binary body only described (dumping it would wreck the terminal)."""
    if answer.kind == "binary":
        line("invoke", answer.summary())
    elif answer.kind == "json":
        body = json.dumps(answer.value, indent=2)
        out.print(Syntax(body, "json", theme="ansi_dark", background_color="default") if out.is_terminal else body,
                  markup=False)
    else:
        out.print(answer.value, markup=False)


def show(target: Target) -> None:
    """The endpoint and every deployment it has here, Azure-style, with what the servers offer."""
    deployments = runtime.describe_endpoint(target.endpoint)
    if not deployments:
        raise LocalmlError.one(f"no local endpoint named {target.endpoint}", fix=f"start it: {start_hint(target)}")
    endpoint_data = (read_json(target.resolved_file) or {}).get("endpoint_data") or {}
    router = endpoint_stage.find_router(target.endpoint)
    for described in deployments:
        described.update(lifecycle.offered_swagger(described))
    described_endpoint = lifecycle.render_endpoint(target.endpoint, endpoint_data, deployments,
                                                   router.base_uri if router else None)
    print(json.dumps(described_endpoint, indent=2))


def logs(target: Target, tail: str, follow: bool) -> None:
    lines = int(tail) if tail.isdigit() else None
    deployed = runtime.find(target.endpoint, target.deployment)
    if deployed is None and runtime.process_record(target.endpoint, target.deployment) is not None:
        # a process that has gone: its log file is what is left of it
        runtime.print_process_log(target.endpoint, target.deployment, lines, follow)
        return
    if deployed is None:
        raise LocalmlError.one(f"no local deployment {target.deployment} on endpoint {target.endpoint}",
                               fix=f"start it: {start_hint(target)}")
    deployed.print_logs(lines, follow)


def delete(target: Target, with_images: bool, takeover: bool = False) -> None:
    claims.hold_deployment(target.endpoint, target.deployment, says("delete"))
    claims.claim_deployment(target.endpoint, target.deployment, takeover, says("delete"))
    removed = runtime.stop(target.endpoint, target.deployment)
    for text in removed.lines:
        line("delete", text)
    if not removed.waits_for_engine:  # else a container of the same name, if any, waits for the engine
        if with_images and removed.custom:
            line("delete", f"kept image {removed.image_tag}: a custom container's image is yours, not localml's")
        elif with_images and removed.image_tag:
            _remove_images(removed.image_tag, target)
    with claims.endpoint_lock(target.endpoint, says("delete")):
        _update_routes(target)


def _remove_images(image_tag: str, target: Target) -> None:
    """Our image, unless another container uses it; for environment.build also the user's built image."""
    users = runtime.containers_using(image_tag)
    if users:
        line("delete", f"kept image {image_tag}: still used by {', '.join(users)}")
        return
    for text in image.remove_images(image_tag, target.build_dir):
        line("delete", text)


def _update_routes(target: Target) -> None:
    """The other deployments keep serving; with none left, the endpoint's router stops."""
    routes = endpoint_stage.read_routes(target.endpoint)
    data = {"traffic": routes["traffic"], "mirror_traffic": routes["mirror_traffic"]} if routes else {}
    remaining = endpoint_stage.routes_now(target.endpoint, data)
    if remaining["deployments"]:
        endpoint_stage.write_routes(target.endpoint, remaining)
        line("delete", f"endpoint {target.endpoint} still routes to {', '.join(sorted(remaining['deployments']))}")
        return
    stopped = endpoint_stage.stop_router(target.endpoint)
    if stopped is not None and stopped[1] == ownership.OURS:
        line("delete", f"stopped the router of endpoint {target.endpoint} (pid {stopped[0]}): it has no deployments "
                       "left")
    elif stopped is not None:
        line("delete", ownership.stale_line(endpoint_stage.ROUTER_FILE, *stopped))


def list_endpoints() -> None:
    """Every local endpoint and deployment (containers on this machine, this folder's processes), each in its
    true state and why; a deployment that is not Succeeded gets the command that starts it again."""
    rows = runtime.describe_everything()
    if not rows:
        line("endpoints", "no local endpoints")
    for endpoint_name in sorted({row["endpoint_name"] or "" for row in rows}):
        router = endpoint_stage.find_router(endpoint_name)
        routes = endpoint_stage.read_routes(endpoint_name) if router else None
        where = f"{router.scoring_uri}  {endpoint_stage.describe_traffic(routes)}" if router and routes else \
            "no router started from this folder"
        out.print(f"[bold]{escape(endpoint_name)}[/]  {escape(where)}")
        for row in (r for r in rows if r["endpoint_name"] == endpoint_name):
            reason = f"  {row['state_reason']}" if row.get("state_reason") else ""
            out.print(f"  {row['name']:<16} {row['provisioning_state']:<10} {row['scoring_uri']:<40} "
                      f"{_where_it_runs(row)}{reason}", markup=False)
            if row["provisioning_state"] == "Failed" and row.get("spec"):
                folder = (row.get("container") or {}).get("workdir")
                elsewhere = f" (in {folder})" if folder and Path(folder) != Path.cwd() else ""
                out.print(f"  {'':<16} fix: {debug_command(row['spec'], endpoint_name, row['name'])}{elsewhere}",
                          markup=False)
    for text in disk.report(disk.measure(state_root()), STATE_DIR_NAME):
        line("disk", text)


def _where_it_runs(row: dict[str, Any]) -> str:
    if row.get("process"):
        return f"process {row['process']['pid']}" + ("" if row["process"]["status"] == "running" else " (gone)")
    return row["container"]["status"]


def prune(with_cache: bool) -> None:
    for text in disk.prune(with_cache):
        line("prune", text)
