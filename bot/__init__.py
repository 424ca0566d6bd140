"""The GitHub App: webhooks in, check runs and one PR comment out; runs go to a job queue."""
