"""Entry point of ``python -m runner``."""

import sys

from runner.commands import exit_with_workers_on_sigterm, main

exit_with_workers_on_sigterm()
sys.exit(main())
