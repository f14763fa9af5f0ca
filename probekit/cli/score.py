"""`probekit score`: minimal-pair accuracy and margin per paradigm, next to published BLiMP numbers.

    probekit score --model smollm2-135m --data blimp:../shared/data/blimp --out runs/score

Writes minimal_pairs.csv/.md/.tex (`PairScores.write`, the same files as an experiment's ``score``
stage) and prints each paradigm with the published GPT-2 accuracy where there is one.
"""

from __future__ import annotations

from typing import Any


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="minimal-pair accuracy and margin per paradigm (BLiMP convention)",
        description="Score minimal pairs with a causal LM: a pair is correct when the good "
        "sentence has the higher total log-probability (sink token in front). "
        "Writes minimal_pairs.csv/.md/.tex (per paradigm, with 95%% bootstrap "
        "CIs) and prints ours next to published GPT-2.",
    )
    p.add_argument("--model", required=True, help="built-in name, random:<name> or model directory")
    p.add_argument("--data", required=True, help="minimal-pair data: blimp:PATH or template:agreement")
    p.add_argument("--by", default="paradigm", help="group column, e.g. paradigm (default) or attractor")
    p.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.analyses.scoring import PUBLISHED_BLIMP, PUBLISHED_CITATION, analyze_pairs, check_scorable
    from probekit.cli.common import check_outputs, positive
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report.outdir import final_path, staged_output

    positive(args, "max_pairs", "batch_size")
    check_outputs(args.out)
    model = load_model(args.model)
    check_scorable(model)  # refuse encoders before loading data
    data = load_dataset(args.data, max_sentences=args.max_pairs)
    res = analyze_pairs(
        model, data, by=args.by, batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed
    )
    with staged_output(args.out) as tmp:
        written = [final_path(p, tmp, args.out) for p in res.write(tmp)]
    published = False
    row: Any  # a namedtuple row (pandas-stubs types its attributes as scalars)
    for row in res.summary.itertuples(index=False):
        d = row._asdict()
        gpt2 = PUBLISHED_BLIMP.get(str(d[args.by]), {}).get("GPT-2")
        published |= gpt2 is not None
        print(
            f"{d[args.by]:<45} n={d['n']:<5} accuracy {d['accuracy']:.3f} "
            f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]  margin {d['mean_margin']:+.3f}"
            + (f"  (GPT-2, published: {gpt2:.3f})" if gpt2 is not None else "")
        )
    if published:
        print(f"published numbers: {PUBLISHED_CITATION}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
