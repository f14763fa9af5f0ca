"""Experiment configs: validation, overrides, resume after a kill, byte-identical reruns."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import probekit as pk
from probekit.experiment import stages
from probekit.experiment.config import MAX_ALIAS_VALUES, ExperimentConfig, config_reference, load_config
from probekit.experiment.run import run_experiment
from probekit.experiment.sweep import load_sweep

BASE = {
    "name": "unit",
    "seed": 0,
    "out": "out",
    "models": ["tiny-llama", "tiny-bert"],
    "data": {"bank": "template:bank_sense?n=24"},
    "analyses": {
        "check_attention": {},
        "claims": {"bank_template": "bank", "n_perm": 20},
    },
}


def _write(tmp_path: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unknown_key_suggests_the_nearest(tmp_path):
    cfg = dict(BASE, analyses={"check_atention": {}})
    with pytest.raises(
        pk.ProbekitError, match=r"unknown config key 'analyses.check_atention'[\s\S]*check_attention"
    ):
        load_config(_write(tmp_path, cfg))
    cfg = dict(BASE, modles=["tiny-bert"])
    with pytest.raises(pk.ProbekitError, match=r"did you mean 'models'"):
        load_config(_write(tmp_path, cfg))


def test_wrong_type_names_the_key(tmp_path):
    cfg = dict(BASE, seed="zero")
    with pytest.raises(pk.ProbekitError, match=r"config key 'seed'"):
        load_config(_write(tmp_path, cfg))
    cfg = dict(BASE, analyses={"claims": {"n_perm": "many"}})
    with pytest.raises(pk.ProbekitError, match=r"'analyses.claims.n_perm'"):
        load_config(_write(tmp_path, cfg))


def test_two_probes_entries_on_the_same_data_are_rejected(tmp_path):
    entry = {"data": "bank", "tasks": ["sense"]}
    cfg = dict(BASE, analyses={"probes": [entry, dict(entry, seeds=[1])]})
    with pytest.raises(pk.ProbekitError, match=r"'analyses.probes'[\s\S]*one entry"):
        load_config(_write(tmp_path, cfg))


def test_missing_seed_is_rejected(tmp_path):
    cfg = {k: v for k, v in BASE.items() if k != "seed"}
    with pytest.raises(pk.ProbekitError, match="'seed'"):
        load_config(_write(tmp_path, cfg))


def test_set_overrides_and_relative_paths(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = dict(BASE, data={"ewt": "ud:../data/x.conllu", "bank": "template:bank_sense"})
    loaded, _ = load_config(_write(sub, cfg), ["seed=3", "analyses.claims.n_perm=33", "models=[tiny-bert]"])
    assert loaded.seed == 3 and loaded.analyses.claims.n_perm == 33 and loaded.models == ["tiny-bert"]
    assert loaded.out == str((sub / "out").resolve())
    assert loaded.data["ewt"] == f"ud:{(tmp_path / 'data' / 'x.conllu').resolve()}"
    with pytest.raises(pk.ProbekitError, match="key=value"):
        load_config(_write(sub, cfg), ["seed"])


def test_bad_yaml_gives_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nseed: [0\n")
    with pytest.raises(pk.ProbekitError, match=r"bad.yaml:\d+"):
        load_config(path)


# --------------------------------------------------------------------------------------------------
# hostile or broken files give short errors, fast (issue 15)


def _alias_bomb(levels: int) -> str:
    """A config whose ``name`` is ``levels`` nested lists of 9 aliases each: 9**levels strings of 60
    characters once expanded, from a file of a few hundred bytes."""
    lines = ["name: &top", f'  - &l0 "{"x" * 60}"']
    for level in range(1, levels + 1):
        lines.append(f"  - &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join([*lines, "seed: 0", "out: o", "models: [tiny-bert]", ""])


@pytest.mark.parametrize("levels", [4, 6])
def test_a_yaml_alias_bomb_is_refused_before_validation(tmp_path, levels):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels))
    assert len(path.read_bytes()) < 600
    start = time.perf_counter()
    with pytest.raises(pk.ProbekitError, match=rf"repeat more than {MAX_ALIAS_VALUES} values") as err:
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert len(str(err.value)) < 400
    assert "bomb.yaml:6" in str(err.value)  # the 4th level (line 6) is the first to repeat > 1000 values
    sweep = tmp_path / "bomb.sweep.yaml"  # sweep files are read the same way
    sweep.write_text(_alias_bomb(levels).replace("name: &top", "grid: {seed: [0]}\nbase: &top"))
    with pytest.raises(pk.ProbekitError, match="YAML aliases"):
        load_sweep(sweep)


def test_small_aliases_and_recursive_aliases(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: x\nseed: 0\nout: o\nmodels: &m [tiny-bert]\ndata: {}\n"
        "analyses:\n  heads: {data: &d [svo]}\n  score: {data: *d}\n"
    )
    assert load_config(path)[0].analyses.score.data == ["svo"]
    path.write_text("name: &n [*n]\nseed: 0\nout: o\nmodels: [tiny-bert]\n")
    with pytest.raises(
        pk.ProbekitError, match=r"alias \*n refers to a value that contains it[\s\S]*ok.yaml:1"
    ):
        load_config(path)


def test_a_rejected_value_is_quoted_in_a_short_excerpt(tmp_path):
    name = [[f"{i}.{j}" * 40 for j in range(20)] for i in range(20)]  # large, no aliases (distinct values)
    cfg = dict(BASE, name=name)
    with pytest.raises(pk.ProbekitError, match=r"config key 'name': Input should be a valid string") as err:
        load_config(_write(tmp_path, cfg))
    assert len(str(err.value)) < 300
    with pytest.raises(pk.ProbekitError, match=r"not valid YAML[\s\S]*--set seed"):
        load_config(_write(tmp_path, BASE), ["seed=[0"])


def test_a_missing_key_error_does_not_print_the_config(tmp_path):
    cfg = {k: v for k, v in BASE.items() if k != "seed"} | {
        "data": {f"d{i}": "template:svo_adj" for i in range(99)}
    }
    with pytest.raises(pk.ProbekitError, match=r"config key 'seed': Field required") as err:
        load_config(_write(tmp_path, cfg))
    assert "template:svo_adj" not in str(err.value) and len(str(err.value)) < 300


def test_run_is_byte_identical_and_resumes_after_a_kill(tmp_path, monkeypatch):
    path = _write(tmp_path, BASE)
    clean = run_experiment(path, out=tmp_path / "clean", progress=False)

    # kill the run during its second analysis (claims), after check_attention finished
    def killed(run, opts):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setitem(stages.STAGES, "claims", killed)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(path, out=tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed/check_attention/tiny-llama/.done").exists()
    assert not (tmp_path / "resumed/claims").exists()

    resumed = run_experiment(path, out=tmp_path / "resumed", progress=False)
    import json

    manifest = json.loads((resumed / "manifest.json").read_text())
    assert "check_attention/tiny-llama" in manifest["reused_stages"]  # reused, not recomputed
    assert "claims/tiny-llama" not in manifest["reused_stages"]
    assert manifest["timings_s"]["check_attention/tiny-llama"] >= 0.0  # its original cost is kept
    marker = (tmp_path / "resumed/check_attention/tiny-llama/.done").read_text().split()
    assert manifest["cpu_s"]["check_attention/tiny-llama"] == float(marker[2]) > 0.0  # and its CPU time
    assert manifest["cpu_s"]["claims/tiny-llama"] > 0.0 and manifest["cpu_s"]["total"] > 0.0
    clean_csvs = sorted(p.relative_to(clean) for p in clean.rglob("*.csv"))
    assert clean_csvs == sorted(p.relative_to(resumed) for p in resumed.rglob("*.csv"))
    for rel in clean_csvs:
        assert filecmp.cmp(clean / rel, resumed / rel, shallow=False), rel
    assert (resumed / "REPORT.md").read_text() == (clean / "REPORT.md").read_text()


def test_report_rebuilds_from_csvs(tmp_path):
    path = _write(tmp_path, dict(BASE, models=["tiny-bert"]))
    out = run_experiment(path, out=tmp_path / "run", progress=False)
    before = (out / "REPORT.md").read_text()
    (out / "REPORT.md").unlink()
    from probekit.cli import main

    assert main(["report", str(out)]) == 0
    assert (out / "REPORT.md").read_text() == before
    assert "C1" in before and "C3" in before


def test_report_and_verdicts_name_skipped_stages_and_the_run(tmp_path):
    """REPORT.md is built from the run's manifest (title, skipped stages): both must be in the report a
    run writes, not only in one rebuilt later; the provenance record then hashes the finished folder."""
    cfg = dict(
        BASE,
        models=["tiny-bert"],
        data={"agreement": "template:agreement?n=6"},
        analyses={"check_attention": {}, "score": {"data": ["agreement"]}},
    )
    out = run_experiment(_write(tmp_path, cfg), out=tmp_path / "run", progress=False)
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# unit")
    assert "Not run: score: tiny-bert has no trained language-model head" in report
    verdicts = (out / "verdicts.csv").read_text()
    assert "C5,tiny-bert,not testable in this model" in verdicts
    files = json.loads((out / "manifest.json").read_text())["provenance"]["files"]
    assert {"REPORT.md", "verdicts.csv", "check_attention/tiny-bert/check_attention.csv"} <= set(files)
    from probekit.cli import main

    (out / "REPORT.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "REPORT.md").read_text() == report


def test_config_reference_covers_every_field():
    ref = config_reference()
    for key in ExperimentConfig.model_fields:
        if key != "analyses":
            assert f"`{key}`" in ref


def test_readme_documents_every_config_field():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert config_reference() in readme, (
        "README's config reference is stale: paste probekit.experiment.config_reference()"
    )


def test_shipped_configs_validate():
    root = Path(__file__).resolve().parents[2] / "experiments"
    for path in sorted(root.glob("*.yaml")):
        if path.name.endswith(".sweep.yaml"):
            continue
        load_config(path)


def test_a_run_with_heads_writes_the_c4_rule_table(tmp_path):
    """The verdict stage writes c4_rule.csv (old rule, new rule, random-init false-positive rate) and
    REPORT.md shows it; C4's verdict row names the table."""
    cfg = dict(
        BASE,
        models=["tiny-bert"],
        data={"svo": "template:svo_adj?n=40", "agr": "template:agreement_sentences?n=40"},
        analyses={"heads": {"data": ["svo", "agr"], "n_boot": 100, "n_perm": 10}},
    )
    out = run_experiment(_write(tmp_path, cfg), out=tmp_path / "run", progress=False)
    table = pd.read_csv(out / "c4_rule.csv")
    assert set(table.model) == {"tiny-bert"} and len(set(table.data)) == 2  # both data sets
    assert set(table.relation) <= {"nsubj", "amod", "det", "obj"}
    tested = table[table.p_family.notna()]
    assert len(tested) == table.family_size.iloc[0] > 0
    assert (tested.p_offset > 0).all() and (tested.p_family >= tested.p_offset).all()
    assert table.random_fpr.between(0, 1).all() and table.random_family_size.iloc[0] > 0
    assert not (table.new_rule & ~(table.p_family <= 0.05)).any()  # no pass without Holm
    report = (out / "REPORT.md").read_text()
    assert "**The C4 rule, before and after**" in report
    (c4,) = [line for line in (out / "verdicts.csv").read_text().splitlines() if line.startswith("C4,")]
    assert "c4_rule.csv" in c4 and "false-positive rate" in c4


# --------------------------------------------------------------------------------------------------
# the ablate stage


ABLATE = dict(
    BASE,
    models=["tiny-llama"],
    data={
        "agreement": "template:agreement?n=12",
        "selection": "template:agreement_sentences?n=12&seed=1",
    },
    analyses={
        "ablate": {
            "data": "agreement",
            "heads_data": "selection",
            "select": ["attention", "heads_score"],
            "top_k": 2,
            "n_draws": 4,
            "max_pairs": 8,
            "n_boot": 100,
        }
    },
)


def _ablate_cfg(**options) -> dict:
    return dict(ABLATE, analyses={"ablate": {**ABLATE["analyses"]["ablate"], **options}})


def test_ablate_stage_tests_every_criterion_on_the_same_pairs(tmp_path, monkeypatch):
    # tiny-llama's LM head is random, so the stage would skip it: let it through
    monkeypatch.setattr(stages, "_scoreable", lambda run, name, analysis: True)
    out = run_experiment(_write(tmp_path, _ablate_cfg()), out=tmp_path / "run", progress=False)
    folder = out / "ablate" / "tiny-llama__agreement"
    summary = pd.read_csv(folder / "specialists_vs_random.csv", dtype={"heads": str})
    assert list(dict.fromkeys(summary.criterion)) == ["attention", "heads_score"]
    assert set(summary.n_items) == {8} and set(summary.n_draws) == {4}
    assert set(summary.heads_data) == {"template:agreement_sentences?n=12&seed=1"}
    chosen = pd.read_csv(folder / "specialists.csv")
    assert chosen.groupby("criterion").size().to_dict() == {"attention": 2, "heads_score": 2}
    assert chosen[chosen.criterion == "attention"].attention.is_monotonic_decreasing
    draws = pd.read_csv(folder / "random_draws.csv", dtype={"heads": str})
    assert draws.groupby("criterion").draw.nunique().to_dict() == {"attention": 4, "heads_score": 4}
    text = (folder / "summary.md").read_text()
    assert "## Which criterion holds" in text
    for r in summary[summary.metric == "margin"].itertuples():  # the prose quotes the table
        assert f"p = {r.p_value:.3g}" in text and f"{r.specialists_delta:+.3f}" in text


def test_ablate_stage_refuses_selection_on_the_evaluated_sentences(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "_scoreable", lambda run, name, analysis: True)
    cfg = _ablate_cfg(heads_data="template:agreement_sentences?n=12")  # seed 0: the pairs' own sentences
    with pytest.raises(pk.ProbekitError, match=r"head-selection sentences are also evaluated[\s\S]*seed=1"):
        run_experiment(_write(tmp_path, cfg), out=tmp_path / "run", progress=False)


def test_ablate_options_check_criteria_and_commentary(tmp_path):
    cfg = _ablate_cfg(select="attention")
    assert load_config(_write(tmp_path, cfg))[0].analyses.ablate.select == ["attention"]
    with pytest.raises(pk.ProbekitError, match=r"analyses\.ablate\.select"):
        load_config(_write(tmp_path, _ablate_cfg(select=["attention", "attention"])))
    with pytest.raises(pk.ProbekitError, match=r"analyses\.ablate\.select"):
        load_config(_write(tmp_path, _ablate_cfg(select=["raw"])))
    with pytest.raises(pk.ProbekitError, match="commentary must not contain digits"):
        load_config(_write(tmp_path, _ablate_cfg(commentary="the top 3 heads matter")))


def test_an_absent_optional_data_name_is_a_clear_error(tmp_path):
    from probekit.experiment.context import Run

    cfg = load_config(_write(tmp_path, dict(BASE, optional_data={"ewt": "ud:missing/en.conllu"})))[0]
    run = Run(cfg, tmp_path / "run", progress=False)
    assert run.spec("ewt") is None
    with pytest.raises(pk.ProbekitError, match=r"optional data 'ewt' is not available"):
        run.dataset("ewt")


def test_run_keeps_the_most_recently_used_models(tmp_path):
    """`Run.model` loads each model once while at most `MODELS_KEPT` are in use, and drops the least
    recently used one first (not the first loaded)."""
    from probekit.experiment.context import MODELS_KEPT, Run

    loads = []

    def loader(name, seed):
        loads.append(name)
        return object()

    cfg = ExperimentConfig.model_validate({"name": "x", "seed": 0, "out": "o", "models": ["tiny-llama"]})
    run = Run(cfg, tmp_path, progress=False, load_model=loader)
    names = [f"m{i}" for i in range(MODELS_KEPT)]
    first = {name: run.model(name) for name in names}
    for _ in range(3):  # stage after stage over the same models: no reload
        assert all(run.model(name) is first[name] for name in names)
    assert loads == names
    run.model(names[0])  # now the most recently used; m1 is the least
    run.model("another")
    assert loads == [*names, "another"]
    assert run.model(names[0]) is first[names[0]]
    run.model(names[1])
    assert loads == [*names, "another", names[1]]
