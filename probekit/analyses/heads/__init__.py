"""heads (temporary re-export during the redesign)."""

from probekit.analyses.heads.score import *  # noqa: F403
