"""The package's entry points: every name in ``modbatt.__all__`` resolves, and importing is light."""

from __future__ import annotations

import subprocess
import sys

import modbatt


def test_every_public_name_resolves_and_dir_lists_them():
    assert set(modbatt.__all__) == {"ModbattError", "Reason", "VerificationError", "__version__", *modbatt._LAZY}
    for name in modbatt.__all__:
        assert getattr(modbatt, name) is not None
    assert set(modbatt.__all__) <= set(dir(modbatt))


def test_import_modbatt_loads_no_layer_above_errors():
    code = "import sys, modbatt; print(sorted(m for m in sys.modules if m.startswith('modbatt')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['modbatt', 'modbatt._version', 'modbatt.errors']"  # layer 0 only


def test_the_entry_points_carry_a_paired_exchange_end_to_end():
    dep = modbatt.InMemoryDeployment(seed=7, modules=1)
    module_node = dep.modules[1]
    record = dep.bind(dep.pack, module_node).record
    outcome = modbatt.pair_entities(dep.controller, dep.pack, module_node, record.binding_id)
    pid = outcome.certificate.metadata.pairing_id
    pack, module = dep.pack.channel(pid), module_node.channel(pid)
    assert isinstance(pack, modbatt.PairedChannel) and isinstance(dep.pack.freshness, modbatt.EphemeralFreshness)
    frame = pack.send(modbatt.MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")
    assert module.receive(frame.can_id, frame.data).tier is modbatt.Tier.PAIRING
    assert modbatt.pump(pack, module) == 0  # nothing to resync on a fresh session
    levels = modbatt.run_all_levels(dep.controller, dep.pack, module_node, record.binding_id, pid)
    assert sorted(levels) == [str(n) for n in sorted(modbatt.LEVELS)]
    with modbatt.open_bus(modbatt.BusConfig(interface="virtual", channel="api-test")) as bus:
        assert bus is not None
    dep.ledger.close()
