"""Every domain-separation label of cipher suite v1, defined once.

Each HKDF ``info``, each signature and each sealed box starts with its own label, so a
value produced for one purpose can never verify for another (DESIGN §3). Changing the
suite means a new version prefix, never an edited label.
"""

from __future__ import annotations

SUITE_VERSION = 1
_PREFIX = b"modbatt/v1/"


def _label(name: str) -> bytes:
    return _PREFIX + name.encode("ascii")


# Sealing to a semi-public key (ECIES).
ECIES_KEY = _label("ecies/key")
# Signatures.
SIG_PROOF_OF_POSSESSION = _label("sig/proof-of-possession")
SIG_BINDING_RECORD = _label("sig/binding-record")
SIG_BINDING_AUTHORIZATION = _label("sig/binding-authorization")
SIG_CONTROLLER_REQUEST = _label("sig/controller-request")
SIG_ENTITY_RESPONSE = _label("sig/entity-response")
SIG_BINDING_ACK = _label("sig/binding-ack")
SIG_LEDGER_STATEMENT = _label("sig/ledger-statement")
SIG_TREE_HEAD = _label("sig/tree-head")
SIG_PAIRING_CERTIFICATE = _label("sig/pairing-certificate")
SIG_PAIRING_COMPLETION = _label("sig/pairing-completion")
# Sealed-box contexts (ECIES associated data).
SEAL_PARTNER_KEY = _label("seal/partner-semi-public-key")
# Pairing (seed Phase 2).
SEAL_PAIRING_SECTION = _label("seal/pairing-section")
SIG_PAIRING_OFFER = _label("sig/pairing-offer")
PAIRING_HANDSHAKE_KEY = _label("pairing/handshake-key")
PAIRING_HALF_EXCHANGE = _label("pairing/half-exchange")
PAIRING_TRAFFIC_SECRET = _label("pairing/traffic-secret")
PAIRING_EXCHANGE_SECRET = _label("pairing/exchange-secret")
PAIRING_BLIND_TRAFFIC_SECRET = _label("pairing/blind-traffic-secret")
PAIRING_BLIND_EXCHANGE_SECRET = _label("pairing/blind-exchange-secret")
# Commitments recorded in the ledger instead of keys.
COMMIT_SEMI_PUBLIC_KEY = _label("commit/semi-public-key")
# CAN secured frames (modbatt.can.secured): traffic keys, binding-tier frame and resync signatures.
CAN_TRAFFIC_KEY = _label("can/traffic-key")
SIG_CAN_FRAME = _label("sig/can-frame")
SIG_CAN_RESYNC = _label("sig/can-resync")
# Key identifiers.
KEY_ID = _label("key-id")
# Key store.
KEYSTORE_KEK = _label("keystore/kek")
KEYSTORE_BLOB = _label("keystore/blob")
KEYSTORE_BACKUP = _label("keystore/backup")
# Seeded (reproducible) randomness: tests and docs only.
REPRODUCIBLE_STREAM = _label("reproducible/stream")
