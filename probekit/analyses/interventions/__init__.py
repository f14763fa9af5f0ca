"""interventions (temporary re-export during the redesign)."""

from probekit.analyses.interventions.engine import *  # noqa: F403
