"""`probekit capture`: word-level capture of residuals and attention, plus the C1 check.

probekit capture --model minilm-l6 --data seed:explored --out runs/capture
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "capture",
        help="capture word-level residuals/attention; check softmax(qk/sqrt(d))",
        description="Capture word-level attention for a dataset and write "
        "attention.csv (every head's word-to-word weights) and "
        "check_attention.csv/.md/.tex (claim C1, on the first sentence).",
    )
    p.add_argument("--model", required=True, help="built-in name, random:<name> or model directory")
    p.add_argument("--data", required=True, help="data spec, e.g. seed:explored, ud:FILE, template:svo_adj")
    p.add_argument(
        "--layers",
        default="all",
        help="comma-separated layers whose attention to capture, 0..n_layers-1, or 'all' "
        "(numbering: docs/layers.md)",
    )
    p.add_argument("--max-sentences", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from probekit.activations.capture import capture
    from probekit.analyses.attention import analyze_attention
    from probekit.cli.common import check_layers, check_outputs, parse_layers, positive
    from probekit.data import load_dataset
    from probekit.models import load_model
    from probekit.report import write_table
    from probekit.report.outdir import staged_output

    positive(args, "max_sentences", "batch_size")
    layers = parse_layers([args.layers])
    check_outputs(args.out)
    data = load_dataset(args.data, max_sentences=args.max_sentences)
    model = load_model(args.model)
    layers = check_layers(layers, model, residual=False)
    cap = capture(model, data, layers=layers, resid=(), attention=True, batch_size=args.batch_size)
    out = Path(args.out)
    with staged_output(out) as tmp:
        write_table(attention_frame(cap), tmp / "attention.csv")
        analyze_attention(model, cap.sentences[0]).write(tmp)
    print(
        f"wrote {out}/attention.csv and check_attention.csv/.md/.tex ({len(cap)} sentences, "
        f"capture key {cap.key})"
    )
    return 0


def attention_frame(cap):
    """Tidy frame: one row per (sentence, layer, head, from word, to word) weight."""
    import numpy as np
    import pandas as pd

    frames = []
    for i, sent in enumerate(cap.sentences):
        att = cap.attention(i)  # [layer, head, from, to]
        _, n_heads, n, _ = att.shape
        layer, head, src, tgt = np.meshgrid(
            cap.attn_layers, range(n_heads), range(n), range(n), indexing="ij"
        )
        frames.append(
            pd.DataFrame(
                {
                    "sentence_id": sent.id,
                    "layer": layer.ravel(),
                    "head": head.ravel(),
                    "from_word": src.ravel(),
                    "from": np.array(sent.words)[src.ravel()],
                    "to_word": tgt.ravel(),
                    "to": np.array(sent.words)[tgt.ravel()],
                    "weight": att.ravel().round(6),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
