"""Cheap task metrics beside the NLL: did the model's own greedy answer come out right?

- `exact_match` on items whose reference answer states a final number ("The answer is 42", "#### 42"):
  the last number the model writes must equal it.
- `pass@1` on code items that carry tests (MBPP-style `assert` lines in the prompt, or the examples in a
  HumanEval-style docstring: `>>> f(x)` / `f(x) == y` / `f(x) => y` / `f(x) ➞ y`): the model's code plus
  those tests must run cleanly in the sandbox (deploy/sandbox.py). An item counts only if its reference
  solution passes its own extracted tests, so a test the parser got wrong cannot count against a model.

Any eval set can hold such items; the metric is reported for every column that has at least one.
"""

from __future__ import annotations

import doctest
import re
from dataclasses import dataclass

from deploy.sandbox import run_python

FINAL = re.compile(r"(?:the (?:final )?answer is|####)\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)", re.I)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)
DEF = re.compile(r"^def\s+(\w+)\s*\(", re.M)
ARROW = re.compile(r"^\s*(\w+\(.*\))\s*(?:==|=>|➞|->)\s*(.+?)\s*$")

EXACT, PASS1 = "exact_match", "pass@1"


@dataclass
class Task:
    metric: str  # EXACT or PASS1
    answer: str = ""  # exact_match: the reference's final number
    tests: str = ""  # pass@1: test code appended to the model's code
    prelude: str = ""  # pass@1: the prompt's code (signature, imports), used when the model omits it


def normalise(num: str) -> str:
    num = num.replace(",", "").rstrip(".")
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    return "0" if num in {"-0", ""} else num


def final_number(text: str) -> str | None:
    """The stated final answer, else the last number in the text."""
    marked = FINAL.findall(text)
    if marked:
        return normalise(marked[-1])
    nums = NUMBER.findall(text)
    return normalise(nums[-1]) if nums else None


def extract_code(text: str) -> str:
    blocks = FENCE.findall(text)
    return max(blocks, key=len) if blocks else text


def _docstring_tests(code: str, name: str) -> list[str]:
    tests = []
    for ex in doctest.DocTestParser().get_examples(code):
        want = re.split(r"\"\"\"|'''", ex.want)[0].strip()  # the docstring's closing quotes are not output
        if ex.source.strip().startswith(name + "(") and want:
            tests.append(f"assert ({ex.source.strip()}) == ({want})")
    for line in code.splitlines():
        m = ARROW.match(line)
        if m and m.group(1).startswith(name + "(") and ">>>" not in line:
            tests.append(f"assert ({m.group(1)}) == ({m.group(2)})")
    return tests


def code_task(prompt: str) -> Task | None:
    """MBPP-style `assert` lines, or the examples of the function the prompt asks to complete."""
    asserts = [ln.strip() for ln in prompt.splitlines() if ln.strip().startswith("assert ")]
    if asserts:
        return Task(PASS1, tests="\n".join(["import math", *asserts]))  # MBPP's tests assume math is imported
    blocks = FENCE.findall(prompt)
    code = blocks[0] if blocks else ""
    names = DEF.findall(code)
    if not names:
        return None
    tests = _docstring_tests(code, names[-1])
    return Task(PASS1, tests="\n".join(tests), prelude=code) if tests else None


def task_of(row: dict) -> Task | None:
    """The checkable task an eval row carries, if any (chat rows only: the last message is the reference)."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1].get("content"), str):
        return None
    reference = msgs[-1]["content"]
    prompt = "\n".join(m.get("content", "") for m in msgs[:-1] if isinstance(m.get("content"), str))
    task = code_task(prompt)
    if task is None:
        m = FINAL.findall(reference)
        return Task(EXACT, answer=normalise(m[-1])) if m else None
    return task if check(task, reference) else None  # the reference must pass its own tests


def program(task: Task, output: str) -> str:
    code = extract_code(output)
    names = DEF.findall(task.prelude)
    if task.prelude and names and not re.search(rf"^def\s+{names[-1]}\s*\(", code, re.M):
        code = task.prelude.rstrip() + "\n" + code  # the model wrote only the body: give it the signature
    return code + "\n\n" + task.tests + "\n"


def check(task: Task, output: str, timeout: float = 10.0) -> bool:
    if task.metric == EXACT:
        return final_number(output) == task.answer
    return run_python(program(task, output), timeout).passed
