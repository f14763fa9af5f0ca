"""`probekit probe`: per-layer linear probes with their controls, on one model and one data spec.

    probekit probe --model minilm-l6 --data ud:../shared/data/ud-en-ewt/en_ewt-ud-dev.conllu \\
        --task upos --split random lexical --out runs/probe-upos
"""

from __future__ import annotations

from pathlib import Path

from probekit.cli.common import add_backend_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="per-layer linear probes with control task and baselines",
        description="Fit a linear probe on every residual-stream layer (0 = embeddings) and "
        "report it next to its controls: the Hewitt & Liang control task "
        "(selectivity), layer 0, the majority class and, unless --no-random-baseline, "
        "the same probe on the random-init model. Writes probes.csv (+ .md/.tex; one row "
        "per model kind, task, split, layer and seed), probes_summary.csv, "
        "probe_curves.png and summary.md.",
    )
    p.add_argument("--model", required=True, help="built-in name, random:<name> or model directory")
    p.add_argument(
        "--data", required=True, help="data spec, e.g. ud:PATH, template:bank_sense?n=200, seed:bank"
    )
    p.add_argument(
        "--task",
        nargs="+",
        required=True,
        help="tasks: upos, number, role, sense, relation:R (several allowed)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=["all"],
        help="'all' (default) or residual-stream layers 0..n_layers, 0 = embeddings "
        "(numbering: docs/layers.md)",
    )
    p.add_argument(
        "--probe",
        choices=["ridge", "logistic", "linear"],
        default="ridge",
        help="ridge (closed form, LOO alpha; default) or logistic (logistic regression, CV over C); "
        "'linear' is the deprecated old name of logistic",
    )
    p.add_argument(
        "--split",
        nargs="+",
        choices=["random", "lexical"],
        default=["random"],
        help="held-out sentences (random), held-out word types (lexical), or both",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="split/control/bootstrap seeds")
    p.add_argument("--test-size", type=float, default=0.3, help="fraction of instances held out")
    p.add_argument("--max-sentences", type=int, default=None, help="use the first N sentences")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the random-init model")
    p.add_argument("--mdl", action="store_true", help="also compute MDL online codelength (slow)")
    add_backend_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.analyses.probes import analyze_probes
    from probekit.cli.common import (
        backend_session,
        check_backend,
        check_layers,
        check_outputs,
        parse_layers,
        positive,
        sharded,
    )
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report import atomic_write_text, markdown_table
    from probekit.report.markdown import probe_sentence
    from probekit.report.outdir import staged_output

    layers = parse_layers(args.layers)
    positive(args, "max_sentences")
    check_backend(args)
    check_outputs(args.out)
    if args.probe == "linear":
        print("--probe linear is deprecated: the logistic-regression probe is called 'logistic'")
        args.probe = "logistic"
    with_random = not args.no_random_baseline and not args.model.startswith("random:")
    if not args.no_random_baseline and not with_random:
        print(f"{args.model} is itself a random-init model: no random-init baseline is added")
    data = load_dataset(args.data, max_sentences=args.max_sentences)
    model = load_model(args.model)
    layers = check_layers(layers, model, residual=True)
    kwargs = {
        "layers": "all" if layers is None else layers,
        "probe": args.probe,
        "seeds": args.seeds,
        "split": args.split,
        "test_size": args.test_size,
        "mdl": args.mdl,
    }
    ray_model = sharded(args, model)  # None for --backend local
    if ray_model is not None:  # workers capture the shards; the probes are fitted here, as locally
        from probekit.parallel import sharded_streams

        sentences = [s for s in data if hasattr(s, "words")]
        with backend_session(args):
            kwargs["capture"] = sharded_streams(ray_model, sentences, kwargs["layers"])
            if with_random:
                twin = ray_model.random_twin(None)  # analyze_probes loads random:<name> on the default device
                kwargs["random_capture"] = sharded_streams(twin, sentences, kwargs["layers"])
    result = analyze_probes(
        model,
        data,
        args.task,
        random_model=None if with_random else False,
        title=f"{model.name} on {args.data}",
        **kwargs,
    )
    out = Path(args.out)
    summary = result.summary
    with staged_output(out) as tmp:
        result.write(tmp)
        atomic_write_text(tmp / "summary.md", _summary_markdown(summary, model.name, args, markdown_table))
    for r in summary.itertuples(index=False):
        print(f"- {probe_sentence(r)}")
    print(f"wrote {out}/probes.csv, probes_summary.csv, probe_curves.png and summary.md")
    return 0


def _summary_markdown(summary, model_name: str, args, markdown_table) -> str:
    from probekit.report.schema import PROBES_SUMMARY

    columns = [c for c in (*PROBES_SUMMARY.columns[2:], *PROBES_SUMMARY.optional) if c in summary]
    return "\n".join(
        [
            f"# Probes: {model_name} on {args.data}",
            "",
            f"Probe: {args.probe}; seeds {args.seeds}; test size {args.test_size}; layers "
            f"{' '.join(args.layers)}.",
            "Each seed's held-out part is halved (by sentence, or by word type for the lexical split): "
            "the best layer and `first_layer_within` (the shallowest layer within 1 point of the best) "
            "are chosen on the dev halves (`dev_accuracy`), and every other number is a mean over seeds "
            "on the test halves; `ci_low`/`ci_high` are a cluster-bootstrap 95% interval of that "
            "seed-mean test accuracy (sentences or word types resampled within each seed); selectivity = "
            "accuracy − control-task accuracy (Hewitt & Liang 2019). Every layer and seed is in "
            "probes.csv; the curves are in probe_curves.png.",
            "",
            markdown_table(summary[columns]),
            "",
            "![layer curves](probe_curves.png)",
            "",
        ]
    )
