"""Head scores on MiniLM + EWT, recomputed independently: bridge patterns, own word pooling, own treebank
parsing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import probekit as pk
from probekit.analyses.heads import analyze_heads

pytestmark = pytest.mark.integration

N_SENT = 150
RELATIONS = ("nsubj", "obj", "amod", "det")
DIRECTIONS = ("dep_to_head", "head_to_dep")


def read_conllu(path, n):
    """Plain line parsing: (sent_id, words, heads 0-based/-1, base deprels); multiword/empty nodes skipped."""
    out, sid, rows = [], None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# sent_id = "):
                sid = line[len("# sent_id = ") :].strip()
            elif line.startswith("#"):
                continue
            elif not line.strip():
                if rows:
                    out.append((sid, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
                    rows, sid = [], None
                    if len(out) == n:
                        break
            else:
                cols = line.split("\t")
                if "-" in cols[0] or "." in cols[0]:
                    continue
                rows.append((cols[1], int(cols[6]) - 1, cols[7].split(":")[0]))
    return out


def pairs(heads, deprels, relation, direction):
    for dep, head in enumerate(heads):
        if head >= 0 and deprels[dep] == relation:
            yield (dep, head) if direction == "dep_to_head" else (head, dep)


def word_attention_plain(model, sentences, batch_size=50):
    """Per sentence [layer, head, from_word, to_word]: to = sum over a word's tokens, from = mean;
    [CLS]/[SEP]/padding dropped. Right-padded batches with an attention mask."""
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start : start + batch_size]
        enc = model.tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(
                enc["input_ids"],
                attention_mask=enc["attention_mask"],
                names_filter=lambda n: n.endswith("hook_pattern"),
            )
        pattern = np.stack(
            [cache[f"blocks.{layer}.attn.hook_pattern"].double().numpy() for layer in range(model.n_layers)],
            axis=1,
        )  # [B, L, H, T, T]
        for b, words in enumerate(batch):
            word_ids = enc.word_ids(batch_index=b)
            to_sum = np.array([[1.0 if w == j else 0.0 for w in word_ids] for j in range(len(words))])
            from_mean = to_sum / to_sum.sum(1, keepdims=True)
            out.append(np.einsum("wq,lhqk,vk->lhwv", from_mean, pattern[b], to_sum, optimize=True))
    return out


def test_minilm_ewt_head_scores_and_offsets_match_independent_code(minilm, shared_data, cache_dir):
    path = shared_data / "ud-en-ewt" / "en_ewt-ud-dev.conllu"
    data = pk.load_dataset(f"ud:{path}", max_sentences=N_SENT)
    cap = pk.capture(minilm, data, resid=(), attention=True, cache_dir=cache_dir, progress=False)
    res = analyze_heads(
        minilm,
        data,
        relations=list(RELATIONS),
        capture=cap,
        n_boot=200,
        n_perm=50,
        progress=False,
        detector=False,
    )

    sents = read_conllu(path, N_SENT)
    assert [s[0] for s in sents] == [s.id for s in data.sentences]
    _, test = data.split(seed=0)
    test_ids = {s.id for s in test.sentences}
    n_lh = minilm.n_layers * minilm.n_heads
    pred = {}  # sentence id -> [L*H, W] argmax, self excluded
    for (sid, words, _, _), att in zip(
        sents, word_attention_plain(minilm, [s[1] for s in sents]), strict=True
    ):
        att = att.reshape(n_lh, len(words), len(words))
        att[:, np.arange(len(words)), np.arange(len(words))] = -np.inf
        pred[sid] = att.argmax(-1)

    heads = res.heads
    base = res.baselines.set_index(["relation", "direction"])
    for relation in RELATIONS:
        for direction in DIRECTIONS:
            correct = {"dev": [], "test": []}
            offsets = {"dev": [], "test": []}
            for sid, _, hs, ds in sents:
                side = "test" if sid in test_ids else "dev"
                for src, tgt in pairs(hs, ds, relation, direction):
                    correct[side].append(pred[sid][:, src] == tgt)
                    offsets[side].append(tgt - src)
            # fixed-offset baseline from the treebank alone
            counts = Counter(offsets["dev"])
            k = sorted(counts, key=lambda o: (-counts[o], abs(o), o))[0]
            row = base.loc[(relation, direction)]
            assert row.offset == k
            assert row.offset_accuracy == pytest.approx(np.mean(np.array(offsets["test"]) == k))
            assert row.n == len(offsets["test"])
            # every head's accuracy on both sides; float noise may flip a near-tie, so allow one instance
            sub = heads[(heads.relation == relation) & (heads.direction == direction)].sort_values(
                ["layer", "head"]
            )
            for side, col in (("dev", "dev_accuracy"), ("test", "accuracy")):
                mine = np.mean(correct[side], axis=0)
                assert np.abs(sub[col].to_numpy() - mine).max() <= 1.0 / len(correct[side]) + 1e-9, (
                    relation,
                    direction,
                    side,
                )
            best = sub[sub.best_on_dev].iloc[0]
            dev_acc = np.mean(correct["dev"], axis=0)
            assert best.dev_accuracy >= dev_acc.max() - 1.0 / len(correct["dev"]) - 1e-9
            i = int(best.layer) * minilm.n_heads + int(best["head"])
            assert best.accuracy == pytest.approx(
                np.mean(correct["test"], axis=0)[i], abs=1.0 / len(correct["test"]) + 1e-9
            )
