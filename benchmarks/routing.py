"""`forgetless bench routing`: routers compared on held-out source families, in one run, on one encoder."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from benchmarks.routing_methods import METHODS
from benchmarks.routing_outside import load_outside, topic_key
from classifier.data import Examples, load_examples, source_family
from classifier.encoders import DEFAULT_BACKEND, build_encoder
from classifier.errors import InputError
from classifier.metrics import per_group, routing_metrics
from classifier.progress import LoggedProgress

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing" / "dev.jsonl"
ADAPTER_DATA = DEV.parent.parent / "adapters"


def machine() -> str:
    """The CPU the speed figures were taken on: int8 encoders run much faster with AVX-512 (VNNI) than with AVX2
    alone, and the int8 kernels differ slightly in their results too."""
    from deploy.vllm_server import cpu_flags

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    fields: dict[str, str] = {}
    for line in info.splitlines():  # the first CPU's fields (every CPU lists the same)
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.machine()
    # the family and model tell CPU generations apart that share a name (an AMD EPYC of family 25 is Zen 3 or 4,
    # of family 26 Zen 5)
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = cpu_flags(info)
    simd = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512" if "avx512f" in flags else \
        "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {simd}"


def shown(path: Path) -> str:
    """A data path as the report shows it: relative to the repository when it lies beside or inside it."""
    rel = os.path.relpath(Path(path).resolve(), REPO)
    return rel if not rel.startswith("../..") else str(path)


def _subset(ex: Examples, idx) -> Examples:
    return Examples([ex.texts[i] for i in idx], [ex.labels[i] for i in idx], [ex.sources[i] for i in idx], ex.sha256)


PEER_PYTHON = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "semantic_router_peer.py"


def peer_version() -> str | None:
    if not PEER_PYTHON.is_file():
        return None
    r = subprocess.run([str(PEER_PYTHON), "-c", "from importlib.metadata import version; print(version('semantic-router'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None


def run_peers(X: np.ndarray, ex: Examples, families: np.ndarray, fallback: str) -> dict:
    """semantic-router, in its own virtualenv, on the same embeddings and folds; {} when it is not installed."""
    if not PEER_PYTHON.is_file():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "peer.npz"
        np.savez(npz, X=X.astype(np.float32), texts=np.array(ex.texts), labels=np.array(ex.labels), families=families.astype(str))
        r = subprocess.run([str(PEER_PYTHON), str(PEER_SCRIPT), str(npz), fallback], capture_output=True, text=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if r.returncode != 0:
        raise InputError(f"semantic-router peer failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1][:300] if r.stderr.strip() else 'no output'}")
    return json.loads(r.stdout)


def coverage_curve(correct: np.ndarray, conf: np.ndarray, points: int = 20) -> list[tuple[float, float]]:
    order = np.argsort(-conf)
    out = []
    for c in np.linspace(0.05, 1.0, points):
        k = max(1, int(round(c * len(order))))
        out.append((float(c), float(correct[order[:k]].mean())))
    return out


def outside_results(full: dict, encoder, ex: Examples, fallback: str) -> dict:
    """Every method, trained on all of the routing data, on the outside prompts: accuracy per source topic."""
    X = encoder.encode(ex.texts, progress=True)
    groups = np.array([topic_key(s) for s in ex.sources], dtype=object)
    names = sorted(set(groups), key=lambda g: (ex.labels[list(groups).index(g)], g))
    truth = np.array(ex.labels, dtype=object)
    out = {"examples": len(ex),
           "groups": {g: {"route": ex.labels[list(groups).index(g)], "n": int((groups == g).sum())} for g in names},
           "methods": {}}
    for name, m in full.items():
        routes, _ = m.decide(X)
        correct = np.array([r if r is not None else fallback for r in routes], dtype=object) == truth
        per = {g: float(correct[groups == g].mean()) for g in names}
        out["methods"][name] = {"accuracy": float(correct.mean()), "mean_over_sources": float(np.mean(list(per.values()))),
                                "per_source": per}
    return out


def run(data: list[Path], fallback: str = "general", out_dir: Path = RESULTS, latency_n: int = 200,
        outside: Path | None = None) -> dict:
    ex = load_examples(data[0])
    for extra in data[1:]:
        more = load_examples(extra)
        ex = Examples(ex.texts + more.texts, ex.labels + more.labels, ex.sources + more.sources, ex.sha256 + more.sha256)
    labels = ex.label_set
    outside_ex = None if outside is None else load_outside(outside, ex.sources)
    if outside_ex is not None and (unknown := sorted(set(outside_ex.labels) - set(labels))):
        raise InputError(f"{outside}: route directories {', '.join(unknown)} are not routes of the routing data "
                         f"({', '.join(labels)})")
    encoder = build_encoder(DEFAULT_BACKEND)
    X = encoder.encode(ex.texts, progress=True)
    families = np.array([source_family(s) or "unknown" for s in ex.sources])
    fams = sorted(set(families))
    preds = {m.name: np.empty(len(ex), dtype=object) for m in METHODS}
    confs = {m.name: np.zeros(len(ex)) for m in METHODS}
    with LoggedProgress() as bar:
        task = bar.add_task(f"leave-one-family-out ({len(fams)} families × {len(METHODS)} methods)", total=len(fams) * len(METHODS))
        for fam in fams:
            test = np.where(families == fam)[0]
            train = np.where(families != fam)[0]
            sub = _subset(ex, train)
            if len(sub.label_set) < 2 or fallback not in sub.label_set:
                bar.advance(task, len(METHODS))
                continue
            for M in METHODS:
                m = M().fit(X[train], sub, fallback, encoder)
                routes, conf = m.decide(X[test])
                preds[M.name][test] = routes
                confs[M.name][test] = conf
                bar.advance(task)
    # latency of one decision, encoder included, on texts of the data set (cache bypassed)
    sample = [ex.texts[i] for i in np.random.default_rng(0).choice(len(ex), size=min(latency_n, len(ex)), replace=False)]
    full = {M.name: M().fit(X, ex, fallback, encoder) for M in METHODS}
    results = {}
    for M in METHODS:
        m = full[M.name]
        times = []
        for t in sample:
            s = time.perf_counter()
            m.decide(encoder.encode_one(t)[None, :])
            times.append((time.perf_counter() - s) * 1000)
        y_pred = [p if p is not None else fallback for p in preds[M.name]]
        met = routing_metrics(ex.labels, y_pred, labels, fallback, confidence=confs[M.name])
        correct = np.array(y_pred, dtype=object) == np.array(ex.labels, dtype=object)
        met.update(p50_ms=float(np.median(times)), p99_ms=float(np.percentile(times, 99)),
                   coverage_accuracy=coverage_curve(correct, confs[M.name]), per_family=per_group(ex.labels, y_pred, families))
        results[M.name] = met
    enc_ms = []
    for t in sample:
        s = time.perf_counter()
        encoder.encode_one(t)
        enc_ms.append((time.perf_counter() - s) * 1000)
    outside_report = None if outside_ex is None else {"dir": shown(outside), **outside_results(full, encoder, outside_ex, fallback)}
    peers = run_peers(X, ex, families, fallback)
    for name, d in peers.items():
        y_pred = [p if p is not None else fallback for p in d["pred"]]
        conf = np.array(d["conf"], dtype=float)
        met = routing_metrics(ex.labels, y_pred, labels, fallback, confidence=conf)
        correct = np.array(y_pred, dtype=object) == np.array(ex.labels, dtype=object)
        q = np.array(d["query_ms"]) if d["query_ms"] else np.zeros(1)
        # the peer gets precomputed vectors: its decision latency = its own query time + the shared encoder's time
        met.update(p50_ms=float(np.median(q) + np.median(enc_ms)), p99_ms=float(np.percentile(q, 99) + np.percentile(enc_ms, 99)),
                   coverage_accuracy=coverage_curve(correct, conf), per_family=per_group(ex.labels, y_pred, families))
        results[name] = met
    from classifier.speed import measure

    speed = measure(full["forgetless"].r, n=latency_n)
    report = {
        "speed": speed,
        "command": "forgetless bench routing " + " ".join(f"--data {shown(d)}" for d in data)
        + (f" --outside {shown(outside)}" if outside is not None else ""),
        "machine": machine(),
        "validation": f"leave-one-source-family-out over {len(fams)} families",
        "encoder": encoder.identity(),
        "examples": len(ex),
        "versions": {"python": platform.python_version(), "scikit-learn": version("scikit-learn"),
                     "onnxruntime": version("onnxruntime"), "forgetless": version("forgetless"),
                     "semantic-router": peer_version() or "not installed (make peers)"},
        "families": {f: {"n": int((families == f).sum()),
                         "routes": sorted(set(np.array(ex.labels, dtype=object)[families == f]))} for f in fams},
        "methods": {k: {key: v[key] for key in ("accuracy", "macro_f1", "fallback_precision", "fallback_recall", "ece", "p50_ms",
                                                "p99_ms", "per_family")}
                    | {"per_label_f1": {lab: v["per_label"][lab]["f1"] for lab in labels}} for k, v in results.items()},
    }
    if outside_report is not None:
        report["outside"] = outside_report
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing.json").write_text(json.dumps(report, indent=2) + "\n")
    _plots(results, labels, out_dir)
    (out_dir / "routing.md").write_text(_markdown(report, results, labels))
    return report


def _plots(results: dict, labels: list[str], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2))
    for ax, (name, m) in zip(np.atleast_1d(axes), results.items()):
        cm = np.array(m["confusion"]["matrix"], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(f"{name}\nmacro-F1 {m['macro_f1']:.3f}", fontsize=9)
        ax.set_xlabel("decided route", fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("true route", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "routing_confusion.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in results.items():
        xs, ys = zip(*m["coverage_accuracy"])
        ax.plot(xs, ys, marker=".", label=name)
    ax.set_xlabel("coverage (share of prompts kept, most confident first)")
    ax.set_ylabel("accuracy on kept prompts")
    ax.set_title("Coverage vs accuracy, held-out source families")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "routing_coverage.png", dpi=110)
    plt.close(fig)


def _markdown(report: dict, results: dict, labels: list[str]) -> str:
    lines = [
        "# Routing benchmark", "",
        f"Command: `{report['command']}`  ",
        f"Validation: {report['validation']} ({report['examples']} prompts); every method sees the same folds and the "
        f"same embeddings ({report['encoder']['backend']} {report['encoder']['model']}).  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
        f"Machine: {report.get('machine', 'not recorded')}  ",
        "semantic-router: an `IndexedRouter` (local index, top-5 mean) holding the training texts as utterances, on the "
        "same vectors; its Platt calibrator and confidence threshold are fitted on training source families that are not "
        "indexed (per route, its smallest family; a route with one family holds out every fourth row). `+general-route` "
        "indexes the fallback as a route of its own. Its latency is its query time plus the shared encoder's.", "",
        "| method | accuracy | macro-F1 | fallback precision | fallback recall | ECE | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['fallback_precision']:.3f} | "
                     f"{m['fallback_recall']:.3f} | {m['ece']:.3f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} |")
    lines += ["", "Per-route F1:", "", "| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m['per_label_f1'][lab]:.3f}" for lab in labels) + " |")
    if out := report.get("outside"):
        groups = list(out["groups"])
        lines += ["", "## Prompts from sources the routing data does not have", "",
                  f"Every method above but semantic-router, trained on all {report['examples']} prompts, on "
                  f"{out['examples']} prompts of `{out['dir']}` (the adapter data) whose dataset, or subject within "
                  "MMLU and LegalBench, the routing data lacks (benchmarks/routing_outside.py). Share routed to the "
                  "source's route:", "",
                  "| method | " + " | ".join(f"{g} → {out['groups'][g]['route']} (n={out['groups'][g]['n']})" for g in groups)
                  + " | all | mean over sources |",
                  "|---" * (len(groups) + 3) + "|"]
        for name, m in out["methods"].items():
            lines.append(f"| {name} | " + " | ".join(f"{m['per_source'][g]:.3f}" for g in groups)
                         + f" | {m['accuracy']:.3f} | {m['mean_over_sources']:.3f} |")
    fams, names = report["families"], list(report["methods"])
    lines += ["", "## Held-out accuracy per source family", "",
              "Each family's prompts, routed by the methods trained without that family (the folds above). The miss "
              "column names where forgetless sent most of the family's misrouted prompts.", "",
              "| family | route(s) | n | " + " | ".join(names) + " | forgetless's most common miss |",
              "|---" * (len(names) + 4) + "|"]
    for f, info in fams.items():
        miss = report["methods"]["forgetless"]["per_family"][f].get("most_missed_to", "")
        lines.append(f"| {f} | {', '.join(info['routes'])} | {info['n']} | "
                     + " | ".join(f"{report['methods'][n]['per_family'][f]['accuracy']:.2f}" for n in names) + f" | {miss} |")
    sp = report["speed"]
    lines += ["", f"## Decision speed of the forgetless router ({sp['encoder']}, cache bypassed)", "",
              "Same run, same machine; the baseline is plain sentence-transformers `encode` of the same short prompt, the two "
              f"timed in alternating blocks of {sp.get('interleave_block', 1)} prompts.", "",
              "| measure | value |", "|---|---|",
              f"| p50 short prompt (~15 tokens) | {sp['p50_ms_short']:.2f} ms |",
              f"| p99 short prompt | {sp['p99_ms_short']:.2f} ms |",
              f"| p50 long prompt (~200 tokens) | {sp['p50_ms_long']:.2f} ms |",
              f"| p99 long prompt | {sp['p99_ms_long']:.2f} ms |",
              f"| batched throughput, short prompts (batch {sp['batch_size']}) | {sp['throughput_per_s']:.0f} decisions/s |",
              f"| batched throughput, half short, half long | {sp['throughput_mixed_per_s']:.0f} decisions/s |",
              f"| baseline p50 short (sentence-transformers) | {sp['baseline_p50_ms_short']:.2f} ms |",
              f"| ratio p50 short / baseline | {sp['ratio_to_baseline_short']:.2f} |"]
    if sp.get("one_thread_tokens") is not None:
        lines.append(f"| a text alone runs on one ONNX thread up to (measured at start) | {sp['one_thread_tokens']} tokens |")
    lines.append("")
    lines += ["", "![confusion matrices](routing_confusion.png)", "", "![coverage vs accuracy](routing_coverage.png)", ""]
    return "\n".join(lines)
