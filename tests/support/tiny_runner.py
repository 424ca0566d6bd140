"""``python -m runner`` with the tiny test deblender registered as adapter ``tiny``.

The bot's tests start this instead of the runner (``Settings.runner``): the runner is the
real one; only the deblender is the tiny package and its faulty-on-request worker adapter,
or, after a first argument ``--tiny-drift``, the tiny drift deblender (which requires
tinyscale) and its lock.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from runner.commands import exit_with_workers_on_sigterm, main
from runner.deblend import adapters
from support import tiny_adapter, tiny_drift_adapter

exit_with_workers_on_sigterm()
drift = sys.argv[1:2] == ["--tiny-drift"]
folder = Path(tempfile.mkdtemp(prefix="tiny-lock-"))
adapters.ADAPTERS["tiny"] = tiny_drift_adapter(folder) if drift else tiny_adapter(folder)
sys.exit(main([*sys.argv[1 + drift :], "--adapter", "tiny"]))
