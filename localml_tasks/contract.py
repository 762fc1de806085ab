"""What stays fixed: Azure's paths, ports, labels and routes inside and around a local deployment, and the few
names of localml's own that the host and the container agree on. Constants only, so every stage reads the same.

Azure's values come from its local endpoints and its inference server (azureml-inference-server-http), so a
scoring script and `az ml ... --local` tooling see what they would see in Azure.
"""

from __future__ import annotations

from typing import Any

# --- inside the container -------------------------------------------------------------------------
APP_ROOT = "/var/azureml-app"  # Azure's app root: the code folder is mounted at APP_ROOT/<its basename>
MODELS_ROOT = f"{APP_ROOT}/azureml-models"  # the model's parent, as <name>/<version>/<basename of model.path>
CONTAINER_PORT = 5001  # azmlinfsrv's port in Azure's local endpoints
LOCALML_DIR = "/var/localml"  # ours: bin/ (supervisor, debug server, mounted read-only), runtime/ (shared state)
BIN_DIR = f"{LOCALML_DIR}/bin"
RUNTIME_DIR = f"{LOCALML_DIR}/runtime"
DEBUG_CONTAINER_PORT = 5678  # debugpy's default port

# --- on the host: everything listens on the loopback address only -------------------------------------
LOOPBACK = "127.0.0.1"
FIRST_SCORING_PORT = 5001  # the first host port tried for a deployment's scoring port (Azure's fixed one)
FIRST_DEBUG_PORT = 5678
FIRST_ENDPOINT_PORT = 5100  # an endpoint's router

# --- the network every deployment's container joins ----------------------------------------------------
# inter-container traffic off: the scoring server and debugpy (which runs any code it is sent) listen on the
# container's address for the published ports, and no other container, on this network or Docker's default
# one, may reach them; only the ports published on 127.0.0.1 lead in
NETWORK = "localml"
NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "false",
                   "com.docker.network.bridge.host_binding_ipv4": LOOPBACK}

# --- container labels ----------------------------------------------------------------------------
# Azure's own (so `az ml ... --local` tooling can see our containers)
LABEL_LOCAL_ENDPOINT = "azureml-local-endpoint"
LABEL_ENDPOINT = "endpoint"
LABEL_DEPLOYMENT = "deployment"
LABEL_ENDPOINT_DATA = "endpoint-data"
LABEL_DEPLOYMENT_DATA = "deployment-data"
LABEL_AZUREML_PORT = "azureml-port"
# ours: read back only by runtime.py
LABEL_CONFIG_HASH = "localml.config-hash"
LABEL_SCORING_PORT = "localml.scoring-port"
LABEL_DEBUG_PORT = "localml.debug-port"
LABEL_SPEC = "localml.spec"
LABEL_WORKDIR = "localml.workdir"  # the project folder that owns the deployment (claims.py)
LABEL_CODE_DIR = "localml.code-dir"
LABEL_CODE_TARGET = "localml.code-target"
LABEL_HOST_PORTS = "localml.host-ports"  # JSON {role: host port}
LABEL_ROUTES = "localml.routes"  # JSON {scoring|readiness|liveness: {path, port (on the host)}}
LABEL_GPU = "localml.gpu"  # "1": every GPU was requested (gpu=1)
LABEL_CUSTOM = "localml.custom-container"  # "1": the image serves itself (environment.inference_config)
# the dev containers spec's labels: VS Code and @devcontainers/cli find (and reuse) a container by them
LABEL_DEVCONTAINER_FOLDER = "devcontainer.local_folder"
LABEL_DEVCONTAINER_CONFIG = "devcontainer.config_file"


# --- routes ----------------------------------------------------------------------------------------
def inference_server_routes(port: int) -> dict[str, dict[str, Any]]:
    """azmlinfsrv's routes, fixed as in Azure: POST /score, and GET / for liveness and readiness."""
    return {"scoring": {"path": "/score", "port": port}, "readiness": {"path": "/", "port": port},
            "liveness": {"path": "/", "port": port}}


def container_name(endpoint: str, deployment: str) -> str:
    return f"localml-{endpoint}-{deployment}"
