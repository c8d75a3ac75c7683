import os

# Tests run in reproducible mode so seeded keys and spec outputs are stable.
os.environ.setdefault("MODBATT_REPRODUCIBLE", "1")
