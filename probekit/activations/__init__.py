"""Activations: word/token alignment (`align`), TransformerLens hook names (`hooks`) and the cached
capture (`capture`)."""
