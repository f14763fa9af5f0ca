"""Regenerate the README's config reference from the pydantic models (run after changing a config field).

.venv/bin/python scripts/update_readme.py
"""

from pathlib import Path

from probekit.experiment.config import config_reference

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
head, rest = text.split(BEGIN, 1)
_, tail = rest.split(END, 1)
readme.write_text(f"{head}{BEGIN}\n{config_reference()}\n{END}{tail}")
print(f"updated {readme}")
