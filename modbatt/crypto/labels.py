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
# Per-session secrets (docs/pairing.md "Sessions"): HKDF salt = the session transcript hash.
PAIRING_SESSION_TRANSCRIPT = _label("pairing/session-transcript")
PAIRING_SESSION_TRAFFIC_SECRET = _label("pairing/session-traffic-secret")
PAIRING_SESSION_EXCHANGE_SECRET = _label("pairing/session-exchange-secret")
PAIRING_BLIND_SESSION_TRAFFIC_SECRET = _label("pairing/blind-session-traffic-secret")
PAIRING_BLIND_SESSION_EXCHANGE_SECRET = _label("pairing/blind-session-exchange-secret")
# Commitments recorded in the ledger instead of keys.
COMMIT_SEMI_PUBLIC_KEY = _label("commit/semi-public-key")
# CAN secured frames (modbatt.can.secured): traffic keys, binding-tier frame and resync signatures.
CAN_TRAFFIC_KEY = _label("can/traffic-key")
SIG_CAN_FRAME = _label("sig/can-frame")
SIG_CAN_RESYNC = _label("sig/can-resync")
# Validation hierarchy (modbatt.protocol.validation), levels 1-7 and escalation.
SIG_ANNOUNCE = _label("sig/validation/announce")
SIG_WITNESS_REQUEST = _label("sig/validation/witness-request")
SIG_WITNESS_ACK = _label("sig/validation/witness-ack")
SIG_HANDSHAKE = _label("sig/validation/signed-handshake")
VALIDATION_SESSION_KEY = _label("validation/session-key")
PAIRED_HANDSHAKE_AUTH = _label("validation/paired-handshake-auth")
COMMAND_KEY = _label("validation/command-key")
SIG_COMMAND = _label("sig/validation/command")
SIG_COMMAND_ACK = _label("sig/validation/command-ack")
SIG_PAIRING_VALIDATION = _label("sig/validation/pairing-validation")
PAIRING_VALIDATION_MAC = _label("validation/pairing-validation-mac")
SIG_BINDING_VALIDATION = _label("sig/validation/binding-validation")
SIG_LCT_ATTESTATION = _label("sig/validation/lct-attestation")
LCT_ID = _label("lct-id")
SIG_ESCALATION = _label("sig/validation/escalation")
# Key identifiers.
KEY_ID = _label("key-id")
# Key store.
KEYSTORE_KEK = _label("keystore/kek")
KEYSTORE_BLOB = _label("keystore/blob")
KEYSTORE_BACKUP = _label("keystore/backup")
# Seeded (reproducible) randomness: tests and docs only.
REPRODUCIBLE_STREAM = _label("reproducible/stream")
