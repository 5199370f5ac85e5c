"""Stage 3, evaluation: the candidate and its references on the same frozen suites, compared pairwise; the report."""
