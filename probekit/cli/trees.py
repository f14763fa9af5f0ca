"""`probekit trees`: whole dependency trees from attention heads, Clark et al.'s probe and baselines.

    probekit trees --model minilm-l6 --data ud:data/ud-en-ewt/en_ewt-ud-dev.conllu --random-baseline \\
        --out runs/trees/minilm-l6
    probekit trees --model tiny-llama --data template:svo_adj?n=12 --out runs/trees-tiny --quiet

Writes trees_summary, trees_heads, trees_layers, trees_relations, trees_parts (CSV, Markdown, LaTeX),
summary.md, trees_layers.png and trees_drawn.png into --out (`TreesResult.write`; the method and every
column: docs/methods/trees.md).
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "trees",
        help="whole trees from attention: per-head MSTs, the attention probe, chain/offset baselines",
        description="Build every head's maximum spanning tree (undirected, and directed with the gold root) "
        "from word-level attention, fit Clark et al.'s (2019) attention probe on the train part, and "
        "score both against gold trees (UUAS/UAS, punctuation excluded) on the test part, next to "
        "chain, best-offset and random-init baselines.",
    )
    p.add_argument("--model", required=True, help="built-in name, random:<name> or model directory")
    p.add_argument("--data", required=True, help="data spec with gold trees, e.g. ud:FILE")
    p.add_argument("--max-sentences", type=int, default=None, help="first N sentences of the data")
    p.add_argument("--max-words", type=int, default=40, help="skip longer sentences")
    p.add_argument(
        "--split",
        default="0.5,0.2,0.3",
        help="train,dev,test fractions of the usable sentences (default 0.5,0.2,0.3)",
    )
    p.add_argument("--probe-sentences", type=int, default=300, help="at most N train sentences fit the probe")
    p.add_argument("--random-baseline", action="store_true", help="also run random:<model> the same way")
    p.add_argument("--seed", type=int, default=0, help="split / bootstrap seed")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.5,0.2,0.3"`` -> (0.5, 0.2, 0.3); `analyze_trees` checks that they are positive and sum to 1."""
    from probekit.errors import ProbekitError

    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ProbekitError(f"--split {text!r} is not three numbers", fix="e.g. --split 0.5,0.2,0.3")
    return values


def run(args) -> int:
    from probekit.analyses.trees import analyze_trees
    from probekit.cli.common import check_outputs, positive
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report.outdir import staged_output

    positive(args, "max_sentences", "max_words", "probe_sentences", "batch_size", "n_boot")
    split = parse_split(args.split)
    check_outputs(args.out)
    data = load_dataset(args.data, max_sentences=args.max_sentences, seed=args.seed)
    model = load_model(args.model)
    res = analyze_trees(
        model,
        data,
        split=split,
        max_words=args.max_words,
        probe_sentences=args.probe_sentences,
        seed=args.seed,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        random_model=load_model(f"random:{args.model}") if args.random_baseline else None,
        progress=not args.quiet,
        data_label=args.data,
    )
    with staged_output(args.out) as tmp:
        res.write(tmp)
    for row in res.summary.itertuples():
        print(f"{row.model:>24} {row.method:>20} {row.detail:>22}: UUAS {row.uuas:.3f}  UAS {row.uas:.3f}")
    print(f"wrote {args.out} ({len(data.sentences)} sentences)", file=sys.stderr)
    return 0
