"""probes (temporary re-export during the redesign)."""

from probekit.analyses.probes.layers import *  # noqa: F403
from probekit.analyses.probes.layers import probe_summary, probe_with_baselines  # noqa: F401
