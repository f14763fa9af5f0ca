"""`probekit score`: minimal-pair accuracy and margin per paradigm, next to published GPT-2 numbers.

    probekit score --model smollm2-135m --data blimp:../shared/data/blimp --out runs/score
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("score", help="minimal-pair accuracy and margin per paradigm (BLiMP convention)",
                       description="Score minimal pairs with a causal LM: a pair is correct when the good "
                                   "sentence has the higher total log-probability (sink token in front). "
                                   "Writes minimal_pairs.csv (per paradigm, with 95%% bootstrap CIs), "
                                   "pairs.csv (per pair) and summary.md (ours next to published GPT-2).")
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
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report import atomic_write_text, write_table
    from probekit.analyses.scoring import check_scorable, published_table, score_pairs, summary_markdown

    model = load_model(args.model)
    check_scorable(model)  # refuse encoders before loading data
    data = load_dataset(args.data, max_sentences=args.max_pairs)
    summary, per_pair = score_pairs(model, data, by=args.by, batch_size=args.batch_size, n_boot=args.n_boot,
                                    seed=args.seed, return_pairs=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(published_table(summary, args.by), out / "minimal_pairs.csv")
    write_table(per_pair, out / "pairs.csv")
    atomic_write_text(out / "summary.md", summary_markdown(summary, model.name, args.data, args.by))
    for row in summary.itertuples(index=False):
        d = row._asdict()
        print(f"{d[args.by]:<45} n={d['n']:<5} accuracy {d['accuracy']:.3f} "
              f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]  margin {d['mean_margin']:+.3f}")
    print(f"wrote {out}/minimal_pairs.csv, pairs.csv and summary.md")
    return 0
