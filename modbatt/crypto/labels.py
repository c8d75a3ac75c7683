"""Every domain-separation label of cipher suite v1, defined once.

Each HKDF ``info``, each signature and each sealed box starts with its own label, so a
value produced for one purpose can never verify for another (docs/crypto.md §1). Changing the
suite means a new version prefix, never an edited label.

Signature labels made with :func:`_key_hiding` are those a semi-public (binding) key signs:
:meth:`~modbatt.crypto.suite.PrivateKey.sign` and :meth:`~modbatt.crypto.suite.PublicKey.verify`
put the signer's public key into the signed digest for every label in :data:`KEY_HIDING`, so a
signature seen in clear does not reveal its key (docs/crypto.md §3.1). The mark lives here, with
the label, so that no call site can forget it.
"""

from __future__ import annotations

from typing import Final

#: The Modbatt protocol version: the ``v`` every versioned wire structure carries (pairing
#: certificates, ledger entries, tree heads, validation messages) and the ``vN`` of every label.
PROTOCOL_VERSION: Final = 2
#: Version of the specification document (docs/spec): ``PROTOCOL_VERSION.revision``. A revision
#: changes wording only; any change of a byte on the wire takes a new protocol version.
SPEC_VERSION: Final = f"{PROTOCOL_VERSION}.0"
SUITE_VERSION = 1
_PREFIX = f"modbatt/v{PROTOCOL_VERSION}/".encode("ascii")


def _label(name: str) -> bytes:
    return _PREFIX + name.encode("ascii")


_key_hiding_labels: set[bytes] = set()


def _key_hiding(name: str) -> bytes:
    """A signature label whose signer is a semi-public key: its digest covers the signer's key."""
    label = _label(name)
    _key_hiding_labels.add(label)
    return label


# Sealing to a semi-public key (ECIES).
ECIES_KEY = _label("ecies/key")
# Signatures. ``_key_hiding``: signed by a binding (semi-public) key; ``_label``: by a
# controller, authority, identity or LCT key, whose public halves are public anyway.
# Pairing and binding validation messages are signed by the controller too: the key
# hiding costs it nothing, and one label keeps one framing.
SIG_PROOF_OF_POSSESSION = _key_hiding("sig/proof-of-possession")
SIG_BINDING_RECORD = _label("sig/binding-record")
SIG_BINDING_AUTHORIZATION = _label("sig/binding-authorization")
SIG_CONTROLLER_REQUEST = _label("sig/controller-request")
SIG_ENTITY_RESPONSE = _label("sig/entity-response")
SIG_BINDING_ACK = _key_hiding("sig/binding-ack")
SIG_LEDGER_STATEMENT = _label("sig/ledger-statement")
SIG_TREE_HEAD = _label("sig/tree-head")
SIG_PAIRING_CERTIFICATE = _label("sig/pairing-certificate")
SIG_PAIRING_COMPLETION = _key_hiding("sig/pairing-completion")
SIG_BINDING_WITNESS = _label("sig/binding-witness")
# Sealed-box contexts (ECIES associated data).
SEAL_PARTNER_KEY = _label("seal/partner-semi-public-key")
# Pairing (seed Phase 2).
SEAL_PAIRING_SECTION = _label("seal/pairing-section")
SIG_PAIRING_OFFER = _key_hiding("sig/pairing-offer")
PAIRING_HANDSHAKE_KEY = _label("pairing/handshake-key")
PAIRING_HALF_EXCHANGE = _label("pairing/half-exchange")
# Per-session secrets (docs/pairing.md "Sessions"): HKDF salt = the session transcript hash.
PAIRING_SESSION_TRANSCRIPT = _label("pairing/session-transcript")
PAIRING_SESSION_TRAFFIC_SECRET = _label("pairing/session-traffic-secret")
PAIRING_SESSION_EXCHANGE_SECRET = _label("pairing/session-exchange-secret")
PAIRING_BLIND_SESSION_TRAFFIC_SECRET = _label("pairing/blind-session-traffic-secret")
PAIRING_BLIND_SESSION_EXCHANGE_SECRET = _label("pairing/blind-session-exchange-secret")
# The efficient profile (docs/profiles.md): the session's binding MAC secret from static ECDH of
# the two binding keys, and the pairing secret bound to it.
PAIRING_BINDING_MAC_SECRET = _label("pairing/binding-mac-secret")
PAIRING_BOUND_TRAFFIC_SECRET = _label("pairing/binding-bound-traffic-secret")
# Commitments recorded in the ledger instead of keys.
COMMIT_SEMI_PUBLIC_KEY = _label("commit/semi-public-key")
# The key-free binding witness: hash of a party's access data.
WITNESS_ACCESS_HASH = _label("witness/access-data-hash")
# CAN secured frames (modbatt.can.secured): traffic keys, binding-tier frame and resync signatures.
CAN_TRAFFIC_KEY = _label("can/traffic-key")
SIG_CAN_FRAME = _key_hiding("sig/can-frame")
SIG_CAN_RESYNC = _key_hiding("sig/can-resync")
# Validation hierarchy (modbatt.protocol.validation), levels 1-7 and escalation.
SIG_ANNOUNCE = _key_hiding("sig/validation/announce")
SIG_WITNESS_REQUEST = _key_hiding("sig/validation/witness-request")
SIG_WITNESS_ACK = _key_hiding("sig/validation/witness-ack")
SIG_HANDSHAKE = _key_hiding("sig/validation/signed-handshake")
# Level 3 under the efficient profile: HKDF info of the MAC key (from the binding MAC secret) and MAC label.
HANDSHAKE_BINDING_MAC = _label("validation/handshake-binding-mac")
VALIDATION_SESSION_KEY = _label("validation/session-key")
PAIRED_HANDSHAKE_AUTH = _label("validation/paired-handshake-auth")
COMMAND_KEY = _label("validation/command-key")
SIG_COMMAND = _key_hiding("sig/validation/command")
SIG_COMMAND_ACK = _key_hiding("sig/validation/command-ack")
SIG_PAIRING_VALIDATION = _key_hiding("sig/validation/pairing-validation")
PAIRING_VALIDATION_MAC = _label("validation/pairing-validation-mac")
SIG_BINDING_VALIDATION = _key_hiding("sig/validation/binding-validation")
SIG_LCT_ATTESTATION = _label("sig/validation/lct-attestation")
LCT_ID = _label("lct-id")
SIG_ESCALATION = _key_hiding("sig/validation/escalation")
# Key-loss recovery (docs/lifecycle.md §7): a device whose binding key is gone signs its level-1
# key-loss announce with its identity key (the one the binding authority named in the grant).
SIG_KEY_LOSS_ANNOUNCE = _label("sig/validation/key-loss-announce")
# Events an entity reports to the controller (docs/lifecycle.md §8), signed with its identity key.
SIG_ENTITY_EVENT = _label("sig/entity-event")
# Key identifiers.
KEY_ID = _label("key-id")
# Key store.
KEYSTORE_KEK = _label("keystore/kek")
KEYSTORE_BLOB = _label("keystore/blob")
KEYSTORE_BACKUP = _label("keystore/backup")
# PKCS#11 key backend: the PIN a process logged in with, hashed, to check a second backend's.
PKCS11_PIN_CHECK = _label("pkcs11/pin-check")
# Seeded (reproducible) randomness: tests and docs only.
REPRODUCIBLE_STREAM = _label("reproducible/stream")

#: Signature labels whose digest includes the signer's public key (semi-public signers).
KEY_HIDING: frozenset[bytes] = frozenset(_key_hiding_labels)
