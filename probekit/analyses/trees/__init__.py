"""Whole dependency trees: from attention heads (this package) and from the residual stream."""
