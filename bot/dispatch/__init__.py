"""Handing a job to the runner: in a subprocess beside the bot (``local``) or as a Cloud
Run job execution (``cloudrun``), with the runner's command line (``runs``)."""
