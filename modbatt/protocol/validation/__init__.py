"""The validation hierarchy (seed Phase 3): levels 1-7 and escalation, as sans-I/O machines.

=====  ======================  ====================================================================
level  module                  messages (authenticated by)
=====  ======================  ====================================================================
1      ``announce``            announce (binding key)
1      ``key_loss``            key_loss_announce (identity key: the binding key is the one lost)
2      ``witness``             witness_request (binding key), witness_ack (witness key)
3      ``handshake``           hello, reply, finish (binding keys; ephemeral ECDH), session_data
4      ``paired``              challenge, response, confirm (pairing-secret HMAC), session_data
5      ``command``             command, command_ack (pairing-key AEAD + binding keys)
6      ``pairing_validation``  validation_challenge (controller), pairing_validation (both entities)
7      ``binding_validation``  binding_challenge, entity_proof (binding key), lct_attestation (LCT
                               key), binding_validation (controller + ledger inclusion proof)
7      ``key_loss``            key_loss_validation (controller + ledger inclusion proof)
=====  ======================  ====================================================================

Every machine takes ``now`` and an injected random source, never does I/O, and counts its
rejections by :class:`~modbatt.errors.Reason` in ``.rejections``. See docs/validation.md.
"""

from .announce import Announce, Announcer, AnnounceVerifier, BindingKeyRef
from .binding_validation import (
    BindingValidationAuthority,
    BindingValidationResult,
    BindingValidationSubject,
    BindingValidationVerifier,
    LctAttestor,
    lct_id_for_key,
)
from .command import CommandExecutor, CommandOutcome, CommandSender
from .escalation import (
    EscalationGate,
    EscalationPolicy,
    EscalationReason,
    EscalationRequest,
    EscalationRule,
    SeenWindow,
    SignedEscalation,
    Urgency,
)
from .handshake import EphemeralPool, SignedHandshakeInitiator, SignedHandshakeResponder
from .key_loss import KeyLossAnnounce, KeyLossAnnouncer, KeyLossAuthority, KeyLossValidation, KeyLossVerifier
from .paired import PairedHandshakeInitiator, PairedHandshakeResponder
from .pairing_validation import PairingValidationAuthority, PairingValidationParty
from .witness import WitnessedEvent, WitnessRequester, WitnessService

__all__ = [
    "Announce",
    "AnnounceVerifier",
    "Announcer",
    "BindingKeyRef",
    "BindingValidationAuthority",
    "BindingValidationResult",
    "BindingValidationSubject",
    "BindingValidationVerifier",
    "CommandExecutor",
    "CommandOutcome",
    "CommandSender",
    "EphemeralPool",
    "EscalationGate",
    "EscalationPolicy",
    "EscalationReason",
    "EscalationRequest",
    "EscalationRule",
    "KeyLossAnnounce",
    "KeyLossAnnouncer",
    "KeyLossAuthority",
    "KeyLossValidation",
    "KeyLossVerifier",
    "LctAttestor",
    "PairedHandshakeInitiator",
    "PairedHandshakeResponder",
    "PairingValidationAuthority",
    "PairingValidationParty",
    "SeenWindow",
    "SignedEscalation",
    "SignedHandshakeInitiator",
    "SignedHandshakeResponder",
    "Urgency",
    "WitnessRequester",
    "WitnessService",
    "WitnessedEvent",
    "lct_id_for_key",
]
