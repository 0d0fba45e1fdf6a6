"""LoRA training: deterministic for a seed, resumable after a hard kill, strict about its input."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
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
    bad.write_text('{"messages": [{"role": "user", "content": "hi \\udc00"}, {"role": "assistant", "content": "yo"}]}\n')
    r = run_cli("adapters", "train", "--data", bad, "--out", tmp_path / "o", "--base", base_dir, "--steps", "1")
    assert r.returncode == 2 and f"{bad}:1: field 'messages[0].content' is not valid Unicode" in r.stderr


@pytest.mark.parametrize("target, expect", [
    ("q_proj,foo", "--target: foo: not a linear layer of"),
    (",", "--target: no module given"),
])
def test_a_target_module_the_model_lacks_is_one_line_naming_the_choices(tmp_path, base_dir, target, expect):
    good = tmp_path / "good.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    r = run_cli("adapters", "train", "--data", good, "--out", tmp_path / "o", "--base", base_dir, "--steps", "1",
                "--target", target)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and expect in last and "q_proj, up_proj, v_proj, or all-linear" in last, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_long_chats_keep_their_answer(tmp_path, base_dir):
    """A chat longer than --max-length loses its prompt's start by default, never its answer; `--truncate end`
    (how the demo adapters were trained) cuts the end, and a chat whose answer it cuts away is skipped."""
    from transformers import AutoTokenizer

    from deploy.train_adapter import tokenize_chat, window

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    question = "Read this clause and say who pays. " + "The supplier shall deliver the goods on time. " * 40
    answer = "The buyer pays the shipping costs."
    chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    answer_ids = [t for t in tok(answer, add_special_tokens=False)["input_ids"]]

    ids, labels, cut = tokenize_chat(tok, chat, 64)
    assert cut and len(ids) == len(labels) == 64
    kept = [t for t in labels if t != -100]
    assert kept[:len(answer_ids)] == answer_ids  # the whole answer (and the end-of-turn tokens after it)
    assert ids[-len(kept):] == kept and all(t == -100 for t in labels[:64 - len(kept)])
    ids, labels, cut = tokenize_chat(tok, chat, 64, truncate="end")
    assert cut and len(ids) == 64 and all(t == -100 for t in labels)

    # an answer longer than half the window keeps half a window of prompt before it
    assert window(1000, 980, 64, "prompt") == 936  # a 20-token answer: the window ends with the chat
    assert window(1000, 300, 64, "prompt") == 268  # long answer: 32 prompt tokens, then its first 32
    assert window(50, 40, 64, "prompt") == 0 and window(1000, 900, 64, "end") == 0

    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [chat, *[
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]]))
    args = ["adapters", "train", "--data", data, "--base", base_dir, "--steps", "1", "--max-length", "64"]
    r = run_cli(*args, "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{data}: 1 of 9 chats cut to --max-length 64 (--truncate prompt)" in r.stdout + r.stderr
    recipe = json.loads((tmp_path / "p" / "recipe.json").read_text())
    assert recipe["truncate"] == "prompt" and recipe["examples"] == 9 and "--truncate prompt" in recipe["command"]
    r = run_cli(*args, "--out", tmp_path / "e", "--truncate", "end")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 of 9 chats cut to --max-length 64 (--truncate end); 1 skipped (no answer token left)" \
        in r.stdout + r.stderr
    assert json.loads((tmp_path / "e" / "recipe.json").read_text())["examples"] == 8
    r = run_cli(*args, "--out", tmp_path / "x", "--truncate", "middle")
    assert r.returncode == 2 and "--truncate 'middle': expected one of prompt, end" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x").exists()
