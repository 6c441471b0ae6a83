"""Scoring syntheses against the ground truth (:mod:`.metrics`) and making pseudo-validation folders as
the organisers do (:mod:`.drop`)."""
