"""The committed results/seed_claims/ must match the code: recompute a slice of the default job and
compare with the committed rows (within float tolerance: thread counts move the last bits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probekit.experiment import load_config, run_experiment

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "results" / "seed_claims"


def _compare(new: Path, old: Path) -> None:
    a, b = pd.read_csv(new), pd.read_csv(old)
    assert list(a.columns) == list(b.columns), new.name
    assert len(a) == len(b), new.name
    for col in a.columns:
        if pd.api.types.is_numeric_dtype(a[col]) and pd.api.types.is_numeric_dtype(b[col]):
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), atol=1e-4, rtol=1e-4,
                                       equal_nan=True, err_msg=f"{new.name}:{col}")
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), f"{new.name}:{col}"


def test_committed_seed_claims_are_current(tmp_path):
    if not (COMMITTED / "manifest.json").exists():
        pytest.skip("results/seed_claims has not been generated (run `make run`)")
    cfg, _ = load_config(REPO / "experiments" / "seed_claims.yaml", ["models=[minilm-l6]"])
    cfg.analyses.heads.data = ["svo"]
    cfg.analyses.probes = [p for p in cfg.analyses.probes if p.data == "bank"]  # the sense probe (C2)
    cfg.analyses.score = None
    cfg.analyses.ablate = None
    out = run_experiment(cfg, out=tmp_path / "slice", progress=False)
    produced = sorted(p.relative_to(out) for p in out.rglob("*.csv") if p.parent != out)
    assert produced, "the slice produced no tables"
    for rel in produced:
        assert (COMMITTED / rel).exists(), f"{rel} is not in the committed results"
        _compare(out / rel, COMMITTED / rel)
