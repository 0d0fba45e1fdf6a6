"""LoRA training: deterministic for a seed, resumable after a hard kill, strict about its input."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
from conftest import CLI, REPO, run_cli
from safetensors.numpy import load_file

QA = [("What is the capital of France?", "Paris."), ("What is 2 + 2?", "4."), ("Name a primary colour.", "Red."),
      ("What do bees make?", "Honey."), ("What is H2O?", "Water."), ("Which planet is largest?", "Jupiter."),
      ("How many legs does a spider have?", "Eight."), ("What is the opposite of hot?", "Cold.")]


def _data(tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                         for q, a in QA))
    return p


def _args(data, out, base_dir):
    return ["adapters", "train", "--data", str(data), "--out", str(out), "--base", str(base_dir), "--steps", "6",
            "--save-every", "2", "--batch-size", "2", "--max-length", "64", "--seed", "3"]


def test_training_is_deterministic_and_resumable(tmp_path, base_dir):
    data = _data(tmp_path)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out in (a, b):
        r = run_cli(*_args(data, out, base_dir))
        assert r.returncode == 0, r.stderr[-2000:]
    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert set(wa) == set(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert any(np.abs(wa[k]).sum() > 0 for k in wa if "lora_B" in k)  # it did learn something
    log = [json.loads(x) for x in (a / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4, 5, 6]
    assert json.loads((a / "recipe.json").read_text())["seed"] == 3

    # kill -9 after the first checkpoint, then run the same command again: it resumes and ends where `a` ended
    proc = subprocess.Popen([*CLI, *_args(data, c, base_dir)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (c / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (c / "checkpoint.pt").exists() and not (c / "adapter_model.safetensors").exists()
    r = run_cli(*_args(data, c, base_dir))
    assert r.returncode == 0 and "resuming from step" in r.stdout + r.stderr
    wc = load_file(str(c / "adapter_model.safetensors"))
    assert all(np.allclose(wa[k], wc[k], atol=1e-6) for k in wa)
    assert [json.loads(x)["step"] for x in (c / "train_log.jsonl").read_text().splitlines()][-1] == 6


def test_bad_chat_data(tmp_path, base_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = run_cli("adapters", "train", "--data", bad, "--out", tmp_path / "o", "--base", base_dir, "--steps", "1")
    assert r.returncode == 2 and f"{bad}:1: no assistant message" in r.stderr and "Traceback" not in r.stderr
    bad.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    r = run_cli("adapters", "train", "--data", bad, "--out", tmp_path / "o", "--base", base_dir, "--steps", "1")
    assert r.returncode == 2 and "messages[0] needs a role" in r.stderr
