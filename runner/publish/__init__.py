"""Publishing a run: its report (comment, check run, HTML page, residual images), its
upload to the artifact store, its trend record and the merging of a sharded run's parts.

Importing this package imports none of its modules: the bot reads ``report`` and
``history`` without numpy.
"""
