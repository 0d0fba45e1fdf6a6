"""The GPU production path can't run here, so it is validated statically: Kubernetes manifests against the
Kubernetes OpenAPI schemas, the compose file against the compose spec, and both against routes.yaml."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import REPO, run_cli

from gateway.config import RoutesConfig, load_config

DEPLOY = REPO / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


def k8s_docs():
    return [(p.name, d) for p in K8S for d in yaml.safe_load_all(p.read_text()) if d]


@pytest.mark.parametrize("name, doc", k8s_docs(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_manifest_is_valid(name, doc):
    kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_kubernetes_has_what_production_needs():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in k8s_docs()}
    assert {("Deployment", "forgetless-vllm"), ("Deployment", "forgetless-gateway"), ("Service", "forgetless-gateway"),
            ("HorizontalPodAutoscaler", "forgetless-gateway"), ("ConfigMap", "forgetless-routes")} <= kinds
    vllm = next(d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "forgetless-vllm")
    c = vllm["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]
    assert any(m["mountPath"] == "/adapters" for m in c["volumeMounts"])


def _routes_from_configmap() -> RoutesConfig:
    cm = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")
    return RoutesConfig.model_validate(yaml.safe_load(cm["data"]["routes.yaml"]))


def _check_vllm_args(args: list[str], cfg: RoutesConfig):
    flat = " ".join(args)
    assert "--enable-lora" in args
    assert f"--max-lora-rank={cfg.vllm.max_lora_rank}" in args
    assert f"--served-model-name={cfg.base.name}" in args
    # tools work as in the demo: the base's chat template writes Hermes tool calls, so vLLM reads them with that parser
    assert cfg.vllm.tool_parser == "hermes"
    assert "--enable-auto-tool-choice" in args and f"--tool-call-parser={cfg.vllm.tool_parser}" in args
    modules = args[args.index("--lora-modules") + 1:]
    assert [m.split("=")[0] for m in modules] == [a.name for a in cfg.adapters], flat
    assert [m.split("=")[1] for m in modules] == [str(a.path) for a in cfg.adapters]


def test_k8s_vllm_args_match_configmap_routes():
    cfg = _routes_from_configmap()
    vllm = next(d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "forgetless-vllm")
    _check_vllm_args(vllm["spec"]["template"]["spec"]["containers"][0]["args"], cfg)
    assert cfg.vllm.url == "http://forgetless-vllm:8000"


def test_compose_file_matches_compose_spec_and_routes():
    import check_jsonschema

    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    doc = yaml.safe_load((DEPLOY / "gpu" / "compose.yaml").read_text())
    jsonschema.validate(doc, schema)
    cfg = load_config(DEPLOY / "gpu" / "routes.yaml")
    _check_vllm_args(doc["services"]["vllm"]["command"], cfg)
    assert doc["services"]["gateway"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    gpu = doc["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]


def test_compose_spec_validation_catches_mistakes():
    import check_jsonschema

    schema = json.loads((Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())
    doc = yaml.safe_load((DEPLOY / "gpu" / "compose.yaml").read_text())
    doc["services"]["vllm"]["healthchek"] = {"test": ["CMD", "true"]}  # misspelt key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_gateway_dockerfile_copies_real_paths_and_runs_a_real_command():
    lines = (DEPLOY / "gpu" / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for src in shlex.split(line)[1:-1]:
                assert (REPO / src).exists(), src
    entry = json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT"))[len("ENTRYPOINT"):])
    assert entry[0] == "forgetless"
    r = run_cli(*entry[1:], "--help")
    assert r.returncode == 0, r.stderr


def test_the_gateway_image_gets_the_event_loop_and_http_parser_the_gateway_is_measured_on():
    """The image installs forgetless without vLLM, whose dependencies bring uvloop and httptools on the test
    machine: so forgetless requires them itself, and `serve` names them rather than leaving uvicorn to fall back
    to asyncio's loop and the pure-Python h11 parser (23 % fewer requests a second)."""
    import tomllib

    from fastapi import FastAPI
    from packaging.requirements import Requirement

    from deploy.serve import server_config

    deps = {Requirement(d).name for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {"uvicorn", "uvloop", "httptools"} <= deps
    config = server_config(FastAPI(), load_config(REPO / "deploy" / "routes.demo.yaml"))
    assert (config.loop, config.http) == ("uvloop", "httptools")  # named: a missing one fails at start, not slows
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    loop = config.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop"), type(loop)
    finally:
        loop.close()


def test_readme_routes_yaml_example_is_a_valid_config():
    text = (REPO / "README.md").read_text()
    block = text[text.index("## routes.yaml"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = RoutesConfig.model_validate(yaml.safe_load(block))
    assert cfg.adapters[0].description == "Contracts, statutes, litigation."
    assert cfg.route_topics()["legal"] == cfg.adapters[0].topics and cfg.route_topics()["general"]
