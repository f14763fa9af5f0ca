"""Experiments (temporary re-export during the redesign)."""

from probekit.experiment.config import *  # noqa: F403
