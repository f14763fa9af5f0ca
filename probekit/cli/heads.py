"""`probekit heads`: head specialization per relation, with offset / random-init / permutation baselines.

    probekit heads --model smollm2-135m --data ud:../shared/data/ud-en-ewt/en_ewt-ud-dev.conllu \\
        --random-baseline --out results/heads/smollm2-135m__ewt-dev
    probekit heads --model minilm-l6 --data template:svo_adj --relations nsubj,amod,det,obj --out runs/heads

Writes heads.csv, baselines.csv, verdicts.csv, counts.csv, positional.csv, specificity.csv, summary.md
and heatmap_<relation>.png into --out (`HeadAnalysis.write`; every column and rule: docs/methods/heads.md).
With ``--backend ray`` Ray workers capture and reduce shards of the corpus (`probekit.parallel.heads`).
"""

from __future__ import annotations

import sys

from probekit.cli.common import add_backend_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "heads",
        help="score every attention head per relation against baselines; verdicts",
        description="Score every head on dependency and positional relations (argmax accuracy, "
        "attention mass), choose the best head on dev and report it on test against "
        "the best fixed offset, a random-init model and a permutation null; write "
        "verdicts (specialist found / only positional / none).",
    )
    p.add_argument("--model", required=True, help="built-in name, random:<name> or model directory")
    p.add_argument(
        "--data", required=True, help="data spec with gold trees, e.g. ud:FILE or template:svo_adj"
    )
    p.add_argument(
        "--relations",
        default=None,
        help="comma-separated, e.g. nsubj,amod,det,obj,prev_word (default: nsubj,obj,amod,det present "
        "in the data + prev_word,next_word,self,first_word)",
    )
    p.add_argument(
        "--directions", default="dep_to_head,head_to_dep", help="comma-separated word-pair directions"
    )
    p.add_argument("--max-sentences", type=int, default=None)
    p.add_argument("--random-baseline", action="store_true", help="also score random:<model> the same way")
    p.add_argument("--seed", type=int, default=0, help="split / bootstrap / permutation seed")
    p.add_argument("--test-size", type=float, default=0.5)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--n-perm", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-detector", action="store_true", help="skip TransformerLens detect_head")
    p.add_argument("--no-plots", action="store_true", help="skip the heatmap PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_backend_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.analyses.heads import analyze_heads, resolve_relations
    from probekit.cli.common import backend_session, check_backend, check_outputs, positive, sharded
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report.outdir import staged_output

    positive(args, "max_sentences", "batch_size")
    check_backend(args)
    check_outputs(args.out)
    data = load_dataset(args.data, max_sentences=args.max_sentences, seed=args.seed)
    relations = resolve_relations(data, args.relations)  # fail fast, before loading the model
    model = load_model(args.model)
    ray_model = sharded(args, model)  # None for --backend local
    with backend_session(args):
        res = analyze_heads(
            ray_model or model,
            data,
            relations=relations,
            directions=args.directions.split(","),
            batch_size=args.batch_size,
            seed=args.seed,
            n_boot=args.n_boot,
            n_perm=args.n_perm,
            random_baseline=args.random_baseline,
            progress=not args.quiet,
            test_size=args.test_size,
            detector=not args.no_detector,
            random_model=ray_model.random_twin() if ray_model and args.random_baseline else None,
        )
    with staged_output(args.out) as tmp:
        res.write(tmp, heatmaps=not args.no_plots)
    for row in res.verdicts.itertuples():
        print(f"{row.model:>24} {row.relation:>10} {row.direction:>11}: {row.verdict}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    print(f"wrote {args.out} ({len(data.sentences)} sentences; {timing})", file=sys.stderr)
    return 0
