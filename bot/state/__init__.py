"""The bot's state: jobs and webhook deliveries in SQLite (``jobs``) or a GCS bucket
(``gcsstate``), and the reconciler that resumes unfinished jobs (``reconcile``)."""
