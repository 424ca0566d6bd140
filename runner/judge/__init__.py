"""Judging a run: head against base, paired blend by blend and source by source.

``metrics`` defines what is measured and which way is better, ``paired`` the statistics
of paired samples, ``blends`` the blend-by-blend judgement, ``policy`` the settings a
repository may choose (read at the base revision), and ``compare`` the verdict.
"""
