"""`probekit mediate`: causal mediation of head roles with counterfactual inputs.

    probekit mediate --model smollm2-135m --relations agreement,binding --heads-table \
        results/seed_claims/heads/smollm2-135m__ewt/heads.csv --n-pairs 60 --out runs/mediate
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "mediate",
        help="per-head indirect and path-specific effects of counterfactual inputs (causal mediation)",
        description="Patch each head's output (hook_z) from a counterfactual input into the clean run "
        "(all positions, the critical position, and the path through its keys/values at the source "
        "word); heads are selected on half of the pairs and reported on the other half. Writes "
        "mediation_summary/effects/sets/heads (CSV, Markdown, LaTeX), heatmaps, a scatter and summary.md.",
    )
    p.add_argument("--model", required=True, help="built-in name or model directory")
    p.add_argument("--relations", default="agreement", help="comma-separated: agreement, binding, det_noun")
    p.add_argument(
        "--heads-table",
        default=None,
        help="a heads.csv of the heads stage / probekit heads (attention scores); default: score "
        "heads on --heads-data",
    )
    p.add_argument(
        "--heads-data",
        default=None,
        help="sentences to score heads on (default template:svo_adj?n=100, seed+1)",
    )
    p.add_argument("--agreement", default=None, help="agreement pairs (default template:agreement?n=N)")
    p.add_argument("--blimp", default=None, help="BLiMP folder (default: the bundled data/blimp)")
    p.add_argument("--n-pairs", type=int, default=60, help="pairs per relation (half select, half report)")
    p.add_argument("--top-k", type=int, default=5, help="heads per set")
    p.add_argument("--n-random", type=int, default=10, help="layer-matched random head sets")
    p.add_argument(
        "--exact", default="topk", choices=["topk", "all"], help="exact patching on the top-k or all heads"
    )
    p.add_argument(
        "--probe-layer", type=int, default=None, help="encoders: residual layer of the number probe"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--n-perm", type=int, default=1000, help="permutations")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import pandas as pd

    from probekit.analyses.mediation import mediate
    from probekit.cli.common import check_outputs, positive
    from probekit.data import load_dataset
    from probekit.errors import ProbekitError
    from probekit.models import load_model
    from probekit.report.outdir import final_path, staged_output

    positive(args, "n_pairs", "top_k", "n_boot", "n_perm")
    if args.heads_table and not Path(args.heads_table).exists():
        raise ProbekitError(f"--heads-table {args.heads_table} does not exist", fix="give a heads.csv")
    check_outputs(args.out)
    model = load_model(args.model)
    relations = [r.strip() for r in args.relations.split(",") if r.strip()]
    heads = pd.read_csv(args.heads_table) if args.heads_table else None
    heads_data = load_dataset(args.heads_data, seed=args.seed) if args.heads_data else None
    agreement = load_dataset(args.agreement, seed=args.seed) if args.agreement else None
    result = mediate(
        model,
        relations,
        heads=heads,
        heads_data=heads_data,
        agreement=agreement,
        blimp=args.blimp,
        n_pairs=args.n_pairs,
        top_k=args.top_k,
        n_random=args.n_random,
        exact=args.exact,
        probe_layer=args.probe_layer,
        n_boot=args.n_boot,
        n_perm=args.n_perm,
        seed=args.seed,
        progress=True,
    )
    with staged_output(args.out) as tmp:
        wrote = result.write(tmp)
    wrote = [final_path(p, tmp, args.out) for p in wrote]
    for r in result.summary.to_dict("records"):
        print(
            f"{r['relation']}: total effect {r['total_effect']:+.3f}; top attention head "
            f"{r['top_attention_layer']}.{r['top_attention_head']} carries "
            f"{100 * r['top_attention_share']:.1f}%; causal heads: "
            f"{r['causal_heads'] or 'none'}"
        )
    print(f"wrote {len(wrote)} files to {args.out} ({result.seconds:.1f}s)")
    return 0
