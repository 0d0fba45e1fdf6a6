"""Cheap task metrics: final-number exact match, code pass@1 in the sandbox, and greedy answers from a real model."""

from __future__ import annotations

import json
import os
import socket
import time

from benchmarks.forgetting import BASE, COLUMNS, EvalItem, assemble_tasks, model_name
from benchmarks.forgetting_regimes import DOMAINS
from deploy.sandbox import network_isolation, run_python
from deploy.task_metrics import EXACT, PASS1, Task, check, final_number, task_of


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_final_number():
    assert final_number("3 + 4 = 7 apples\nThe answer is 1,250.") == "1250"
    assert final_number("so 10 - 2 = 8\n#### 8") == "8"
    assert final_number("The answer is $2.50.") == "2.5"
    assert final_number("It costs 12.0 dollars") == "12"
    assert final_number("First 4, then 5, finally -3") == "-3"
    assert final_number("no numbers here") is None


def test_shared_eval_items_carry_checkable_tasks(shared):
    """Every gsm8k reference matches its own final number; most code items have tests their reference passes."""
    rows = {d: [json.loads(x) for x in (shared / "adapters" / d / "eval.jsonl").read_text().splitlines()] for d in ("math", "code")}
    math = [task_of(r) for r in rows["math"]]
    assert all(t is not None and t.metric == EXACT for t in math)
    assert all(check(t, r["messages"][-1]["content"]) for t, r in zip(math, rows["math"]))
    assert not check(math[0], "The answer is 123456789.")
    code = [(r, task_of(r)) for r in rows["code"][:40]]
    kept = [(r, t) for r, t in code if t is not None]
    assert len(kept) >= 30 and all(t.metric == PASS1 for _, t in kept)
    humaneval = [t for r, t in kept if r["source"] == "humaneval"]
    assert humaneval and all(t.prelude and "assert (" in t.tests for t in humaneval)
    # a wrong solution fails the same tests
    r, t = kept[0]
    name = t.tests.split("assert ")[1].split("(")[0].strip()
    assert not check(t, f"```python\ndef {name}(*args):\n    return None\n```")
    # HumanEval: a completion that writes only the body still runs, after the prompt's signature
    he_row = next(r for r, t in kept if r["source"] == "humaneval")
    he = task_of(he_row)
    ref = he_row["messages"][-1]["content"]
    body = ref.split('"""')[-1].split("```")[0] if '"""' in ref else None
    if body and body.strip():
        assert check(he, body)


def test_sandbox_limits_and_isolation(monkeypatch):
    t0 = time.monotonic()
    out = run_python("while True:\n    pass\n", timeout=2)
    assert out.reason == "timeout" and not out.passed and time.monotonic() - t0 < 10
    assert not run_python("x = bytearray(4 << 30)\n").passed  # 4 GiB: over the 1 GiB address-space limit
    assert "ZeroDivisionError" in run_python("1 / 0\n").reason
    # the environment is not inherited: secrets of the calling process stay out of the model's code
    monkeypatch.setenv("FORGETLESS_ADMIN_KEY", "s3cret")
    assert run_python("import os\nassert 'FORGETLESS_ADMIN_KEY' not in os.environ\n").passed
    # the working directory is a fresh temporary one, removed afterwards
    out = run_python(f"import os\nassert os.getcwd() != {os.getcwd()!r}\nopen('left.txt', 'w').write('x')\n")
    assert out.passed and not os.path.exists("left.txt")
    if network_isolation():  # root or user namespaces: no network at all, not even loopback listeners
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            port = srv.getsockname()[1]
            out = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
            assert not out.passed and ("Error" in out.reason or "refused" in out.reason), out.reason


def test_greedy_answers_from_the_real_model(base_dir):
    """SmolLM2 answers a trivial coding task right and cannot guess an unspecified one; both checked in the sandbox."""
    from transformers import AutoTokenizer

    from deploy.scoring import PeftScorer
    from deploy.task_eval import PeftGenerator, solve, task_items

    hidden = "import hashlib\ndef checksum(s):\n    return hashlib.sha256(s[::-1].encode()).hexdigest()[:6]\n"
    rows = [
        _chat("Write a Python function add(a, b) that returns the sum of a and b.\nYour code should pass these tests:\n\n"
              "assert add(1, 2) == 3\nassert add(-4, 4) == 0", "```python\ndef add(a, b):\n    return a + b\n```"),
        _chat("Write a Python function checksum(s).\nYour code should pass these tests:\n\nassert checksum('forgetless') == '316144'",
              f"```python\n{hidden}```"),
        _chat("What is 2 + 3?", "The answer is 5."),
        _chat("Tell me about the weather.", "It is sunny."),  # no checkable answer: not a task item
    ]
    tasks = task_items(rows)
    assert [i for i, _ in tasks] == [0, 1, 2]
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    got = solve(PeftGenerator(PeftScorer(base_dir), tok), "base", rows, tasks)
    assert got[0] is True and got[1] is False, got


def test_task_rows_assembled_per_item():
    """Routed rows take each item's task result from the model that answered it."""
    items = [EvalItem("math", {}, "a"), EvalItem("math", {}, "b"), EvalItem("code", {}, "c"), EvalItem("legal", {}, "d")]
    models = [BASE, *(model_name("r", d) for d in [*DOMAINS, "mixed"])]
    solved = {m: {0: False, 1: False, 2: False} for m in models}
    solved[model_name("r", "math")] = {0: True, 1: True, 2: False}
    picks = {"routed": [model_name("r", "math"), BASE, BASE, BASE], "oracle": [model_name("r", "math")] * 2 + [BASE] * 2}
    out = assemble_tasks("r", items, solved, picks)
    assert set(out["base"]) == {"math", "code"} and set(COLUMNS) >= set(out["base"])
    assert out["adapter:math"]["math"] == 1.0 and out["base"]["math"] == 0.0
    assert out["routed"]["math"] == 0.5 and out["oracle"]["math"] == 1.0 and out["routed"]["code"] == 0.0
    assert assemble_tasks("r", items, {}, picks) == {}
    assert check(Task(EXACT, answer="5"), "so 2 + 3 = 5")
