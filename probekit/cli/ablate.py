"""`probekit ablate`: ablate attention heads one at a time and measure what breaks.

    probekit ablate --model smollm2-135m \
        --data blimp:../shared/data/blimp/regular_plural_subject_verb_agreement_1.jsonl \
        --heads all --method zero --max-pairs 64 --out runs/ablate
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="ablate each head (zero/mean/resample) and measure the damage",
        description="Ablate each head's output (hook_z, per query head) and measure the change in "
        "minimal-pair accuracy/margin, or in relation loss/attention for sentences with "
        "arcs (--relation). Writes ablation.csv (layer, head, method, metric, clean, "
        "ablated, delta, CI) and, one head at a time, ablation_heatmap.png "
        "(layers x heads, a panel per metric).",
    )
    p.add_argument("--model", required=True, help="built-in name, random:<name> or model directory")
    p.add_argument("--data", required=True, help="blimp:PATH, template:agreement, or sentences with arcs")
    p.add_argument("--heads", default="all", help="'all' or LAYER.HEAD,... (0-based), e.g. 3.1,12.4")
    p.add_argument("--joint", action="store_true", help="ablate the given heads together, not one at a time")
    p.add_argument("--method", default="zero", choices=["zero", "mean", "resample"])
    p.add_argument(
        "--metric",
        default=None,
        help="comma-separated: accuracy,margin,logprob_diff (pairs) or relation_loss,loss,"
        "relation_attention (sentences); default: all that apply",
    )
    p.add_argument("--relation", default=None, help="UD relation for sentence metrics, e.g. nsubj")
    p.add_argument(
        "--preserve-patterns", action="store_true", help="freeze attention patterns at clean values"
    )
    p.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs (or sentences)")
    p.add_argument(
        "--sweep", default="fast", choices=["fast", "naive"], help="fast (default) or the reference loop"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for resample donors and bootstrap CIs")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.analyses.interventions import ablate, parse_heads
    from probekit.cli.common import check_outputs, positive
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report.outdir import final_path, staged_output

    positive(args, "max_pairs")
    check_outputs(args.out)
    model = load_model(args.model)
    heads = parse_heads(model, args.heads)  # bad head specs fail before any data is loaded
    data = load_dataset(args.data, max_sentences=args.max_pairs)
    metric = [m.strip() for m in args.metric.split(",") if m.strip()] if args.metric else None
    result = ablate(
        model,
        data,
        heads,
        method=args.method,
        metric=metric,
        joint=args.joint,
        sweep=args.sweep,
        seed=args.seed,
        relation=args.relation,
        preserve_patterns=args.preserve_patterns,
        progress=True,
    )
    with staged_output(args.out) as tmp:
        wrote = result.write(tmp, title=f"{model.name}, {args.method} ablation, {args.data}")
    wrote = [final_path(p, tmp, args.out) for p in wrote]
    for metric_name, g in result.frame.groupby("metric", sort=False):
        worst = g.nsmallest(3, "delta")
        listed = ", ".join(f"{r.heads} {r.delta:+.3f}" for r in worst.itertuples())
        print(f"{metric_name}: clean {g['clean'].iloc[0]:.3f}; largest drops: {listed}")
    print(f"wrote {', '.join(map(str, wrote))} ({result.seconds:.1f}s, {result.forwards} forwards)")
    return 0
