"""The analyses an experiment config can name, one function per ``analyses.<name>`` key.

Each function loops over the config's models (and data), and runs one `Run.stage` per combination.
A stage writes its tidy tables with `write_tables` (CSV + Markdown + LaTeX) and its plots into its
own folder; `probekit.experiment.verdicts.build_report` later reads only those files. `STAGES` (at the
bottom) is the registry `probekit.experiment.run.run_experiment` runs, in its order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from probekit.experiment.context import Run, display_spec


def check_attention(run: Run, opts) -> None:
    """C1: recompute every layer's pattern from q and k."""
    from probekit.analyses.attention import analyze_attention

    for name in run.cfg.models:

        def work(folder: Path, name=name):
            analyze_attention(run.model(name), opts.sentence).write(folder)

        run.stage("check_attention", name, "", opts.model_dump(), work)


def claims(run: Run, opts) -> None:
    """C2 (bank) and C3 (explored): head-by-head weights on the source's own sentences."""
    from probekit.analyses.claims import analyze_claims

    for name in run.cfg.models:

        def work(folder: Path, name=name):
            result = analyze_claims(
                run.model(name),
                run.dataset(opts.bank).sentences[0],
                run.dataset(opts.explored).sentences[0],
                run.dataset(opts.bank_template),
                n_perm=opts.n_perm,
                seed=run.cfg.seed,
                batch_size=run.cfg.batch_size,
                progress=run.progress,
                bank_label=display_spec(cast(str, run.spec(opts.bank))),  # a required data name: never None
            )
            result.write(folder)

        run.stage("claims", name, "", opts.model_dump(), work)


def probes(run: Run, all_opts) -> None:
    """Per-layer probes with control task, layer 0, majority and random-init baselines."""
    for opts in all_opts:
        _probes(run, opts)


def _probes(run: Run, opts) -> None:
    from probekit.analyses.probes import analyze_probes

    for _, spec, name in _combinations(run, "probes", [opts.data]):

        def work(folder: Path, name=name, spec=spec):
            data = run.dataset(opts.data, opts.max_sentences)
            random_model = f"random:{name}" if opts.random_baseline else False
            captures: dict[str, Any] = {}
            if run.parallel is None and opts.random_baseline:
                random_model = run.model(cast(str, random_model))  # the name set above
            if run.parallel is not None:  # Ray workers capture shards, the probes are fitted here
                from probekit.parallel import sharded_streams

                sharded = run.parallel(run.model(name), seed=run.cfg.seed)
                sentences = [s for s in data if hasattr(s, "words")]
                captures["capture"] = sharded_streams(sharded, sentences, opts.layers)
                if opts.random_baseline:
                    twin = sharded.random_twin(device=None)
                    captures["random_capture"] = sharded_streams(twin, sentences, opts.layers)
            result = analyze_probes(
                run.model(name),
                data,
                opts.tasks,
                opts.layers,
                probe=opts.probe,
                seeds=tuple(opts.seeds),
                split=opts.split,
                random_model=random_model,
                data_label=display_spec(spec),
                title=f"{name} on {display_spec(spec)}",
                **captures,
            )
            result.write(folder)

        run.stage("probes", name, opts.data, opts.model_dump(), work)


def heads(run: Run, opts) -> None:
    """C4: every head × relation, with offset, random-init and permutation baselines (`analyze_heads`)."""
    from probekit.analyses.heads import analyze_heads

    for data_name, spec, name in _combinations(run, "heads", opts.data):

        def work(folder: Path, name=name, data_name=data_name, spec=spec):
            data = run.dataset(data_name, opts.max_sentences)
            model, random_model = run.model(name), None
            if run.parallel is not None:  # Ray workers capture and reduce shards (docs/scale-out.md)
                model = run.parallel(model, seed=run.cfg.seed)
                random_model = model.random_twin(device=None) if opts.random_baseline else None
            elif opts.random_baseline:
                random_model = run.model(f"random:{name}")
            result = analyze_heads(
                model,
                data,
                relations=opts.relations,
                seed=run.cfg.seed,
                n_boot=opts.n_boot,
                n_perm=opts.n_perm,
                batch_size=run.cfg.batch_size,
                random_baseline=opts.random_baseline,
                progress=run.progress,
                random_model=random_model,
                data_label=display_spec(spec),
                weighting=opts.weighting,
            )
            result.write(folder)

        run.stage("heads", name, data_name, heads_options(opts), work)


def heads_options(opts) -> dict:
    """The heads stage's options as hashed for resuming: ``weighting`` is left out at its default (raw), so
    configs written before it existed keep their stage hashes (their finished stages are reused)."""
    options = opts.model_dump()
    if options.get("weighting") == "raw":
        del options["weighting"]
    return options


def weighting(run: Run, opts) -> None:
    """C4 under norm-weighted and rollout attention vs raw (`compare_weightings`), with the sink table."""
    from probekit.analyses.heads import compare_weightings

    for data_name, spec, name in _combinations(run, "weighting", opts.data):

        def work(folder: Path, name=name, data_name=data_name, spec=spec):
            result = compare_weightings(
                run.model(name),
                run.dataset(data_name, opts.max_sentences),
                relations=opts.relations,
                weightings=opts.weightings,
                seed=run.cfg.seed,
                n_boot=opts.n_boot,
                n_perm=opts.n_perm,
                batch_size=run.cfg.batch_size,
                random_baseline=opts.random_baseline,
                random_model=run.model(f"random:{name}") if opts.random_baseline else None,
                progress=run.progress,
                data_label=display_spec(spec),
            )
            result.write(folder)

        run.stage("weighting", name, data_name, opts.model_dump(), work)


def _combinations(run: Run, analysis: str, data_names: list[str], needs_lm_head: bool = False):
    """``(data name, spec, model name)`` for every available data × config model. Data that is not
    available (an ``optional_data`` path that does not exist) and, with ``needs_lm_head``, models without a
    trained LM head are skipped and recorded in ``run.skipped`` (REPORT.md lists them)."""
    for data_name in data_names:
        spec = run.spec(data_name)
        if spec is None:
            run.skipped.append(f"{analysis}: data {data_name!r} is not available")
            continue
        for name in run.cfg.models:
            if not needs_lm_head or _scoreable(run, name, analysis):
                yield data_name, spec, name


def _scoreable(run: Run, name: str, analysis: str) -> bool:
    """Minimal-pair scoring needs a trained LM head (MiniLM's is random): say so instead of scoring."""
    model = run.model(name)
    if model.is_causal and model.has_lm_head:
        return True
    run.skipped.append(
        f"{analysis}: {name} has no trained language-model head, so minimal-pair "
        "log-probabilities are not testable on it"
    )
    return False


def score(run: Run, opts) -> None:
    """C5: minimal-pair accuracy (whole-sentence log-probability) and critical-word margin, per paradigm."""
    from probekit.analyses.scoring import analyze_pairs

    for data_name, spec, name in _combinations(run, "score", opts.data, needs_lm_head=True):

        def work(folder: Path, name=name, data_name=data_name, spec=spec):
            data = _first_per_paradigm(run.dataset(data_name), opts.max_pairs)
            analyze_pairs(
                run.model(name), data, seed=run.cfg.seed, progress=run.progress, data_label=display_spec(spec)
            ).write(folder)

        run.stage("score", name, data_name, opts.model_dump(), work)


def _first_per_paradigm(dataset, n: int | None):
    """The first ``n`` pairs of *each* paradigm (a BLiMP folder holds several), in file order."""
    from collections import Counter

    from probekit.data import Dataset

    if n is None:
        return dataset
    seen, keep = Counter(), []  # type: Counter[str], list
    for pair in dataset.pairs:
        seen[pair.paradigm] += 1
        if seen[pair.paradigm] <= n:
            keep.append(pair)
    return Dataset(dataset.spec, tuple(keep))


def ablate(run: Run, opts) -> None:
    """C4, causally: ablate the top-k heads for a relation, picked by each selection criterion, vs
    layer-matched random head sets (the same draws and pairs for every criterion)."""
    from dataclasses import replace

    import pandas as pd

    from probekit.analyses.heads.score import score_heads
    from probekit.analyses.interventions import check_disjoint, select_heads, specialists_vs_random

    if run.spec(opts.data) is None or run.spec(opts.heads_data) is None:
        run.skipped.append(f"ablate: data {opts.data!r} or {opts.heads_data!r} is not available")
        return
    for name in run.cfg.models:
        if not _scoreable(run, name, "ablate"):
            continue

        def work(folder: Path, name=name):
            model = run.model(name)
            selection = run.dataset(opts.heads_data)
            pairs = run.dataset(opts.data, opts.max_pairs)
            check_disjoint(selection, pairs, where=f"analyses.ablate: heads_data {opts.heads_data!r}")
            # one head-scoring pass (probekit.analyses.heads.score) serves every criterion
            scored = score_heads(
                model,
                selection,
                relations=[opts.relation],
                directions=(opts.direction,),
                seed=run.cfg.seed,
                n_boot=200,
                n_perm=20,
                batch_size=run.cfg.batch_size,
                progress=run.progress,
            )
            family = scored[(scored.relation == opts.relation) & (scored.direction == opts.direction)]
            chosen = [select_heads(family, c, opts.top_k) for c in opts.select]
            heads = {
                c: [(int(layer), int(head)) for layer, head in zip(t["layer"], t["head"], strict=True)]
                for c, t in zip(opts.select, chosen, strict=True)
            }
            result = specialists_vs_random(
                model,
                pairs,
                heads,
                n_draws=opts.n_draws,
                seed=run.cfg.seed,
                method=opts.method,
                metric=opts.metric,
                n_boot=opts.n_boot,
            )
            summary = result.summary.copy()
            summary.insert(0, "relation", f"{opts.relation}/{opts.direction}")
            # data and heads_data are required data names: spec() is not None
            summary.insert(1, "data", display_spec(cast(str, run.spec(opts.data))))
            summary.insert(
                2, "heads_data", display_spec(cast(str, run.spec(opts.heads_data)))
            )  # a required data name
            columns = [
                "criterion",
                "rank",
                "relation",
                "direction",
                "layer",
                "head",
                "attention",
                "accuracy",
                "dev_accuracy",
                "offset_accuracy",
            ]
            specialists = pd.concat([t[columns] for t in chosen], ignore_index=True)
            result = replace(result, summary=summary, specialists=specialists, commentary=opts.commentary)
            result.write(folder, title=f"{name}: ablate the top-{opts.top_k} {opts.relation} heads")

        run.stage("ablate", name, opts.data, opts.model_dump(), work)


def mediate(run: Run, opts) -> None:
    """C4, by causal mediation: per-head effects of counterfactual inputs (`probekit.mediate`), with the
    attention scores of the heads stage's ``heads.csv`` for ``heads_data`` (scored here when absent)."""
    from probekit.analyses.heads.score import score_heads
    from probekit.analyses.mediation import RELATIONS
    from probekit.analyses.mediation import mediate as run_mediate
    from probekit.analyses.mediation.analysis import POSITIONAL
    from probekit.experiment.context import slug
    from probekit.report import read_table
    from probekit.report.schema import HEAD_SCORES

    if run.spec(opts.agreement) is None or run.spec(opts.heads_data) is None:
        run.skipped.append(f"mediate: data {opts.agreement!r} or {opts.heads_data!r} is not available")
        return
    blimp_spec = run.spec(opts.blimp) if opts.blimp else None
    blimp = Path(blimp_spec.partition(":")[2]) if blimp_spec and blimp_spec.startswith("blimp:") else None
    for name in run.cfg.models:
        model = run.model(name)
        if model.is_causal and not model.has_lm_head:
            run.skipped.append(f"mediate: {name} has no trained language-model head")
            continue
        relations = list(opts.relations) if model.is_causal else ["agreement"]
        if blimp is None:
            relations = [r for r in relations if r != "det_noun"]

        def work(folder: Path, name=name, model=model, relations=relations):
            selection = run.dataset(opts.heads_data)
            table = run.out / "heads" / f"{slug(name)}__{slug(opts.heads_data)}" / "heads.csv"
            if table.exists():
                heads = read_table(table, HEAD_SCORES)
            else:
                labels = sorted({RELATIONS[r][0] for r in relations})
                heads = score_heads(
                    model,
                    selection,
                    relations=[*labels, *POSITIONAL],
                    seed=run.cfg.seed,
                    n_boot=100,
                    n_perm=10,
                    batch_size=run.cfg.batch_size,
                    progress=run.progress,
                )
            result = run_mediate(
                model,
                relations,
                heads=heads,
                heads_data=selection,
                agreement=run.dataset(opts.agreement),
                blimp=blimp,
                n_pairs=opts.n_pairs,
                top_k=opts.top_k,
                n_random=opts.n_random,
                probe_layer=opts.probe_layer,
                n_boot=opts.n_boot,
                n_perm=opts.n_perm,
                seed=run.cfg.seed,
                progress=run.progress,
            )
            result.write(folder)

        run.stage("mediate", name, "", opts.model_dump(), work)


def explore(run: Run, opts) -> None:
    """The HTML report's attention explorer: every head's word-level attention (`probekit.capture`) on
    the first ``n_sentences`` sentences of each dataset of at most ``max_words`` words, with their gold
    arcs (`probekit.report.html.ExplorerSample`, uint8-quantised)."""
    from probekit.activations.capture import capture
    from probekit.report.html import ExplorerSample

    for data_name, spec, name in _combinations(run, "explore", opts.data):

        def work(folder: Path, name=name, data_name=data_name, spec=spec):
            model = run.model(name)
            sentences = [s for s in run.dataset(data_name).sentences if 2 <= len(s.words) <= opts.max_words]
            sentences = sentences[: opts.n_sentences]
            attention, sink = [], []  # each [layer, head, from_word, to_word] and [layer, head, from_word]
            if sentences:
                cap = capture(
                    model, sentences, resid=(), batch_size=run.cfg.batch_size, cache=False, progress=False
                )
                attention = [cap.attention(i) for i in range(len(sentences))]
                sink = [cap.special_mass(i) for i in range(len(sentences))]
            ExplorerSample(
                model=name,
                data=display_spec(spec),
                causal=bool(model.is_causal),
                n_layers=int(model.n_layers),
                n_heads=int(model.n_heads),
                sentences=sentences,
                attention=attention,
                sink=sink,
            ).write(folder)

        run.stage("explore", name, data_name, opts.model_dump(), work)


def trees(run: Run, opts) -> None:
    """Whole trees from attention (`analyze_trees`): every head's MST, the attention probe, baselines;
    with ``structural: true`` also the Hewitt & Manning structural probes in the same folder."""
    from probekit.analyses.trees import analyze_trees

    for data_name, spec, name in _combinations(run, "trees", [opts.data]):

        def work(folder: Path, name=name, data_name=data_name, spec=spec):
            data = run.dataset(data_name)  # whole, so the heads stage's capture cache is reused
            model = run.model(name)
            result = analyze_trees(
                model,
                data,
                split=tuple(opts.split),
                max_words=opts.max_words,
                max_sentences=opts.max_sentences,
                probe_sentences=opts.probe_sentences,
                seed=run.cfg.seed,
                n_boot=opts.n_boot,
                batch_size=run.cfg.batch_size,
                random_model=run.model(f"random:{name}") if opts.random_baseline else None,
                progress=run.progress,
                data_label=display_spec(spec),
            )
            result.write(folder)
            if opts.structural:  # the same usable sentences as the attention trees, split 70/10/20
                from probekit.analyses.trees.analysis import usable_items
                from probekit.analyses.trees.structural import fit_structural_probes
                from probekit.data.dataset import Dataset

                items = usable_items(
                    data, opts.max_words, tuple(opts.split), run.cfg.seed, opts.max_sentences
                )
                used = Dataset(data.spec, tuple(data.sentences[it.index] for it in items))
                fit_structural_probes(
                    model,
                    used,
                    seed=run.cfg.seed,
                    n_boot=opts.n_boot,
                    random_model=run.model(f"random:{name}") if opts.random_baseline else False,
                ).write(folder)

        run.stage("trees", name, data_name, opts.model_dump(), work)


#: every stage, in the order `run_experiment` runs them; the keys are exactly the fields of
#: `probekit.experiment.config.Analyses` (tests/unit/test_layout.py checks both)
STAGES: dict[str, Callable[[Run, Any], None]] = {
    "check_attention": check_attention,
    "claims": claims,
    "heads": heads,
    "weighting": weighting,
    "probes": probes,
    "score": score,
    "ablate": ablate,
    "mediate": mediate,
    "explore": explore,
    "trees": trees,
}
