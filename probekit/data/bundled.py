"""The real data shipped with probekit's source: UD English EWT dev and six BLiMP agreement paradigms.

They live in the repository's ``data/`` folder (licences and attribution in ``data/README.md``), found
relative to this file, so a source checkout (``pip install -e .``, ``make run``) always has them. Users
point any spec at their own copies instead.

Examples
--------
>>> from probekit.data.bundled import EWT_DEV, BLIMP_DIR
>>> EWT_DEV.name, BLIMP_DIR.name
('en_ewt-ud-dev.conllu', 'blimp')
>>> from probekit.data import load_dataset
>>> len(load_dataset(f"ud:{EWT_DEV}", max_sentences=3))
3
"""

from __future__ import annotations

from pathlib import Path

from probekit.errors import ProbekitError

#: the repository's ``data/`` folder
DATA_DIR: Path = Path(__file__).resolve().parents[2] / "data"
#: UD English EWT, dev split (2,001 sentences; CC BY-SA 4.0)
EWT_DEV: Path = DATA_DIR / "ud-en-ewt" / "en_ewt-ud-dev.conllu"
#: BLiMP agreement paradigms, 1,000 pairs each (CC BY 4.0)
BLIMP_DIR: Path = DATA_DIR / "blimp"


def require(path: Path) -> Path:
    """``path`` if it exists, else a `ProbekitError` saying the bundled data is missing."""
    if not path.exists():
        raise ProbekitError(
            f"bundled data not found at {path}",
            where="probekit.data.bundled",
            fix="use a source checkout of probekit (the data/ folder ships with it), "
            "or point the spec at your own copy",
        )
    return path
