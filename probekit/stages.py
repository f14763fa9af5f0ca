"""The analyses an experiment config can name, one function per ``analyses.<name>`` key.

Each function loops over the config's models (and data), and runs one `Run.stage` per combination.
A stage writes its tidy tables with `write_tables` (CSV + Markdown + LaTeX) and its plots into its
own folder; `probekit.report.build_report` later reads only those files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from probekit.experiment import Run, display_spec
from probekit.report import atomic_write_text, write_tables


def check_attention(run: Run, opts) -> None:
    """C1: recompute every layer's pattern from q and k."""
    from probekit.attention import check_attention as check

    for name in run.cfg.models:
        def work(folder: Path, name=name):
            write_tables({"check_attention": check(run.model(name), opts.sentence)}, folder)

        run.stage("check_attention", name, "", opts.model_dump(), work)


def claims(run: Run, opts) -> None:
    """C2 (bank) and C3 (explored): head-by-head weights on the source's own sentences."""
    from probekit import claims as C
    from probekit.capture import capture
    from probekit.report import plot_word_attention

    for name in run.cfg.models:
        def work(folder: Path, name=name):
            model = run.model(name)
            bank = run.dataset(opts.bank).sentences[0]
            explored = run.dataset(opts.explored).sentences[0]
            cap = capture(model, [bank, explored], resid=(), attention=True, batch_size=run.cfg.batch_size,
                          progress=run.progress)
            bank_frame = C.bank_attention(model, bank, cap=_one(cap, 0))
            head_frame, head_summary = C.bank_cue_heads(model, run.dataset(opts.bank_template),
                                                        n_perm=opts.n_perm, seed=run.cfg.seed)
            explored_frame = C.explored_weights(model, explored, cap=_one(cap, 1))
            explored_summary = C.explored_summary(explored_frame, model.is_causal)
            write_tables({
                "bank_attention": bank_frame,
                "bank_summary": C.bank_summary(bank_frame),
                "bank_cue_heads": head_frame,
                "bank_cue_summary": pd.DataFrame([head_summary]),
                "explored_weights": explored_frame,
                "explored_summary": pd.DataFrame([explored_summary]),
            }, folder)
            # attention views: the heads the tables single out, labelled with the words
            best_cue = tuple(int(x) for x in head_summary["best_head"].split("."))
            closest = tuple(int(x) for x in explored_summary["closest_head"].split("."))
            plot_word_attention(cap.attention(1), explored.words, [closest, (model.n_layers - 1, 0)],
                                folder / "explored_attention.png", title=f"{name}: {explored.text}",
                                layers=cap.attn_layers)
            plot_word_attention(cap.attention(0), bank.words, [best_cue], folder / "bank_attention.png",
                                title=f"{name}: seed:bank", layers=cap.attn_layers)

        run.stage("claims", name, "", opts.model_dump(), work)


class _one:
    """A view of one sentence of a capture, shaped like a one-sentence capture."""

    def __init__(self, cap, i: int):
        self._cap, self._i = cap, i
        self.attn_layers = cap.attn_layers

    def attention(self, _):
        return self._cap.attention(self._i)

    def special_mass(self, _):
        return self._cap.special_mass(self._i)


def probes(run: Run, all_opts) -> None:
    """Per-layer probes with control task, layer 0, majority and random-init baselines."""
    for opts in all_opts:
        _probes(run, opts)


def _probes(run: Run, opts) -> None:
    from probekit.probes import probe_layers, probe_with_baselines
    from probekit.report import plot_probe_curves

    spec = run.spec(opts.data)
    if spec is None:
        run.skipped.append(f"probes: data {opts.data!r} is not available")
        return
    for name in run.cfg.models:
        def work(folder: Path, name=name):
            data = run.dataset(opts.data, opts.max_sentences)
            kwargs = dict(layers=opts.layers, probe="ridge" if opts.probe == "ridge" else "linear",
                          seeds=tuple(opts.seeds), split=opts.split)
            if opts.random_baseline:
                frame = probe_with_baselines(run.model(name), data, opts.tasks,
                                             random_model=run.model(f"random:{name}"), **kwargs)
            else:
                frame = probe_layers(run.model(name), data, opts.tasks, **kwargs)
                frame.insert(0, "model_kind", "trained")
            frame["data"] = display_spec(spec)
            write_tables({"probes": frame}, folder)
            plot_probe_curves(frame, folder / "probe_curves.png", title=f"{name} on {display_spec(spec)}")

        run.stage("probes", name, opts.data, opts.model_dump(), work)


def _save_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
