"""Schema-driven fuzzing of a running gateway with schemathesis: every operation in its OpenAPI schema gets
valid (positive) and invalid (negative) generated requests; a case fails when the gateway answers 5xx, does
not answer within the timeout, or answers an error that is not OpenAI-shaped.
"""

from __future__ import annotations

import time


def fuzz(url: str, cases_per_operation: int = 80, headers: dict | None = None, timeout: float = 20.0,
         seed: int = 0, progress=None) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{url.rstrip('/')}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    out = {"operations": {}, "cases": 0, "failures": [], "status_counts": {}}
    t0 = time.monotonic()
    for op in ops:
        label = f"{op.method.upper()} {op.path}"
        count = {"cases": 0}
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @hseed(seed)
            @settings(max_examples=cases_per_operation // 2, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            @given(case=op.as_strategy(mode))
            def one(case):
                count["cases"] += 1
                start = time.monotonic()
                try:
                    resp = case.call(base_url=url, headers=headers or {}, timeout=timeout)
                except Exception as exc:  # noqa: BLE001 - a hang or a dropped connection is the finding
                    out["failures"].append({"operation": label, "mode": mode.value, "error": f"{type(exc).__name__}: {exc}"[:300]})
                    return
                code = resp.status_code
                out["status_counts"][str(code)] = out["status_counts"].get(str(code), 0) + 1
                problem = None
                if code >= 500:
                    problem = f"HTTP {code}"
                elif code >= 400 and op.path != "/metrics":
                    try:
                        err = resp.json().get("error", {})
                        if not isinstance(err, dict) or not err.get("message"):
                            problem = f"HTTP {code} without an OpenAI error body"
                    except ValueError:
                        problem = f"HTTP {code} with a non-JSON body"
                if time.monotonic() - start > timeout:
                    problem = f"answer took {time.monotonic() - start:.1f} s"
                if problem:
                    out["failures"].append({"operation": label, "mode": mode.value, "error": problem,
                                            "body": str(case.body)[:300]})
                if progress:
                    progress()

            try:
                one()
            except Unsatisfiable:  # e.g. no invalid request exists for an operation without parameters
                pass
        out["operations"][label] = count["cases"]
        out["cases"] += count["cases"]
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out
