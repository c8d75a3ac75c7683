"""Suite-wide settings, inherited by notebook kernels that nbval starts."""

import os
import tempfile

# Seeded keys and ids: stable outputs for nbval and the tests (never set in production).
os.environ.setdefault("MODBATT_REPRODUCIBLE", "1")
# Notebooks run by the suite write figures and results to a scratch folder, not the repo.
os.environ.setdefault("MODBATT_OUTPUT_DIR", tempfile.mkdtemp(prefix="modbatt-test-output-"))
