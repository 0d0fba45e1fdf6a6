"""`forgetless route ...`: train, evaluate, query and time the embedding router."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from classifier.data import load_descriptions, load_examples, load_training_examples
from classifier.encoders import DEFAULT_BACKEND, ENCODERS, build_encoder
from classifier.errors import InputError, check_output_dir, exit_on_input_error
from classifier.routers.embedding import EmbeddingRouter

app = typer.Typer(help="Train, evaluate, query and time the embedding router.", no_args_is_help=True)
err = Console(stderr=True)

RouterDir = Annotated[Path, typer.Option("--router", help="Directory of a saved router.")]
EncoderModel = Annotated[
    Optional[Path],
    typer.Option("--encoder-model", help="Local sentence-transformers model dir (default: bundled all-MiniLM-L6-v2)."),
]


def metrics_table(m: dict, title: str) -> Table:
    t = Table(title=f"{title}: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  fallback rate {m['fallback_rate']:.3f}")
    for col in ("route", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "route" else "right")
    for lab, v in m["per_label"].items():
        t.add_row(lab, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    return t


def confusion_table(m: dict) -> Table:
    labels = m["confusion"]["labels"]
    t = Table(title="confusion (rows: true route, columns: decided route)")
    t.add_column("")
    for lab in labels:
        t.add_column(lab, justify="right")
    for lab, row in zip(labels, m["confusion"]["matrix"]):
        t.add_row(lab, *map(str, row))
    return t


def source_table(per_source: dict) -> Table:
    t = Table(title="accuracy per source (and where most of its misrouted texts went)")
    for col in ("source", "n", "accuracy", "most missed to"):
        t.add_column(col, justify="left" if col in ("source", "most missed to") else "right")
    for name, v in per_source.items():
        t.add_row(name, str(v["n"]), f"{v['accuracy']:.3f}", v.get("most_missed_to", ""))
    return t


@app.command()
@exit_on_input_error
def train(
    data: Annotated[Path, typer.Option("--data", help="JSONL with {text, label[, source]} per line.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the router to.")],
    fallback: Annotated[str, typer.Option("--fallback", help="Route that means 'the base model'.")] = "general",
    encoder: Annotated[str, typer.Option("--encoder", help=f"Encoder backend: {', '.join(ENCODERS)}.")] = DEFAULT_BACKEND,
    encoder_model: EncoderModel = None,
    descriptions: Annotated[
        Optional[Path], typer.Option("--descriptions", help="YAML/JSON mapping route -> a description line or a list of topic lines (the zero-shot part).")
    ] = None,
    builtin_topics: Annotated[
        bool, typer.Option("--builtin-topics/--no-builtin-topics",
                           help="Give routes named legal, medical, code, math, finance or general built-in topic lines when --descriptions has none for them.")
    ] = True,
):
    """Train a router from labelled JSONL and save it to --out."""
    check_output_dir(out)
    ex = load_training_examples(data, fallback)
    desc = load_descriptions(descriptions) if descriptions else None
    enc = build_encoder(encoder, encoder_model)
    router = EmbeddingRouter.fit(ex, fallback, enc, progress=True, log=lambda s: err.print(s), descriptions=desc,
                                 builtin_topics=builtin_topics)
    router.save(out)
    val = router.meta["validation"]
    Console().print(metrics_table(val, f"validation ({val['scheme']})"))
    Console().print(f"thresholds: {json.dumps({k: round(v, 2) for k, v in router.thresholds.items()})}")
    Console().print(f"saved router to {out}")


@app.command("eval")
@exit_on_input_error
def evaluate(
    router: RouterDir,
    data: Annotated[Path, typer.Option("--data", help="Labelled JSONL to evaluate on.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    encoder_model: EncoderModel = None,
):
    """Accuracy, macro-F1, per-route P/R/F1, confusion matrix, fallback rate and (when lines name a source) accuracy
    per source, on labelled data. Each text is decided alone, as the gateway decides."""
    r = EmbeddingRouter.load(router, encoder_model=encoder_model)
    ex = load_examples(data)
    unknown = sorted(set(ex.labels) - set(r.labels))
    if unknown:
        raise InputError(f"{data}: labels {', '.join(unknown)} are not routes of {router} (routes: {', '.join(r.labels)})")
    m = r.evaluate(ex.texts, ex.labels, groups=ex.sources if all(ex.sources) else None, progress=True)
    if as_json:
        sys.stdout.write(json.dumps(m) + "\n")
        return
    Console().print(metrics_table(m, str(data)))
    Console().print(confusion_table(m))
    if "per_source" in m:
        Console().print(source_table(m["per_source"]))


@app.command()
@exit_on_input_error
def predict(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to route.")],
    router: RouterDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per text.")] = False,
    encoder_model: EncoderModel = None,
):
    """Route each TEXT: the chosen route, its probability and the top 3."""
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise InputError(f"TEXT {i}: blank text cannot be routed")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # argv bytes the locale could not decode (kept as surrogates)
            raise InputError(f"TEXT {i}: not valid UTF-8 (character {exc.start})") from None
    r = EmbeddingRouter.load(router, encoder_model=encoder_model)
    for text, d in zip(texts, [r.decide(t) for t in texts]):  # one at a time, as the gateway decides
        if as_json:
            sys.stdout.write(json.dumps({"text": text, **d.as_dict()}) + "\n")
        else:
            top = ", ".join(f"{name} {p:.2f}" for name, p in d.top)
            flag = " (fallback)" if d.fallback else ""
            Console().print(f"[bold]{d.route}[/bold]{flag}  p={d.probability:.2f}  top-3: {top}  <- {text[:70]!r}")


@app.command()
@exit_on_input_error
def bench(
    router: RouterDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    n: Annotated[int, typer.Option("--n", min=20, help="Single requests timed per prompt length.")] = 200,
    encoder_model: EncoderModel = None,
):
    """Decision latency (short and long prompts, one at a time) and batched throughput."""
    from classifier.speed import measure

    r = EmbeddingRouter.load(router, encoder_model=encoder_model)
    m = measure(r, n=n)
    if as_json:
        sys.stdout.write(json.dumps(m) + "\n")
        return
    t = Table(title=f"router decision speed ({m['encoder']})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in m.items():
        if k != "encoder":
            t.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    Console().print(t)
