"""Binding private keys in a PKCS#11 token (SoftHSM): sign and ECDH in the token, never extractable."""

from __future__ import annotations

import itertools

import pytest
from conftest_softhsm import softhsm  # noqa: F401 - the fixture

from modbatt.crypto.keystore import KeyStore
from modbatt.crypto.suite import PrivateKey, open_sealed, seal_to_semi_public_key
from modbatt.errors import KeyStoreError, VerificationError
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.inmemory import InMemoryDeployment, module_access

_prefixes = itertools.count()


@pytest.fixture
def token(softhsm):  # noqa: F811
    """A backend with a label prefix of its own, so tests sharing the session's token stay apart."""
    from modbatt.crypto.pkcs11 import Pkcs11KeyBackend

    backend = Pkcs11KeyBackend(softhsm.module, token_label=softhsm.token_label, user_pin=softhsm.user_pin,
                               prefix=f"test{next(_prefixes)}/")  # fmt: skip
    yield backend
    backend.close()


def test_sign_and_ecdh_run_in_the_token(token):
    key = token.generate()
    sig = key.sign(b"label", b"message")
    key.public_key.verify(b"label", b"message", sig)
    with pytest.raises(VerificationError, match="bad_signature"):
        key.public_key.verify(b"other-label", b"message", sig)
    peer = PrivateKey.generate()
    assert key.exchange(peer.public_key) == peer.exchange(key.public_key)
    box = seal_to_semi_public_key(key.public_key, b"partner key", context=b"ctx")
    assert open_sealed(key, box, context=b"ctx") == b"partner key"  # ECIES opened by the token's ECDH
    assert key.reproducible is False


def test_keys_are_sensitive_and_never_extractable(token):
    import pkcs11
    from pkcs11 import Attribute

    key = token.generate()
    token.store("binding/x/key", key)
    private = key._private
    assert key.extractable is False
    assert private[Attribute.SENSITIVE] and private[Attribute.ALWAYS_SENSITIVE]
    assert private[Attribute.NEVER_EXTRACTABLE] and private[Attribute.TOKEN]
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        private[Attribute.VALUE]
    for relax in ({Attribute.EXTRACTABLE: True}, {Attribute.SENSITIVE: False}):
        with pytest.raises(pkcs11.exceptions.AttributeReadOnly):
            private.copy(relax)
    with pytest.raises(pkcs11.exceptions.AttributeReadOnly):
        private[Attribute.EXTRACTABLE] = True
    again = token.load("binding/x/key")
    assert again.public_key == key.public_key and again.extractable is False


def test_a_key_never_stored_leaves_nothing_in_the_token(softhsm, token):  # noqa: F811
    from modbatt.crypto.pkcs11 import Pkcs11KeyBackend

    token.generate()  # a decision computed but never persisted
    with pytest.raises(TypeError):
        token.store("x", PrivateKey.generate())  # only the token's own keys go in
    token.close()
    reopened = Pkcs11KeyBackend(softhsm.module, token_label=softhsm.token_label, user_pin=softhsm.user_pin,
                                prefix=token.prefix)  # fmt: skip
    assert reopened.names() == []
    reopened.close()


def test_a_module_binds_with_its_binding_key_in_the_token(softhsm, token):  # noqa: F811
    from modbatt.crypto.pkcs11 import Pkcs11KeyBackend, TokenKey

    dep = InMemoryDeployment(seed=31, modules=0)
    store = KeyStore.in_memory(reproducible=True)
    access = module_access(2)
    module = EntityNode.provision(store, access_data=access, controller_key=dep.controller_key.public_key,
                                  clock=dep.clock, rng=dep.rng, keys=token)  # fmt: skip
    dep.client.nodes[access.endpoint] = module
    outcome = dep.bind(dep.pack, module)
    record = outcome.record
    name = f"binding/{record.binding_id}/key"
    state = module.binding(record.binding_id)
    assert isinstance(state.private_key, TokenKey)
    assert token.names() == [name] and store.key_names() == ["identity"]  # not in the key store
    assert state.private_key.public_key == record.entity_b.semi_public_key
    assert state.partner_key == record.entity_a.semi_public_key  # sealed partner key opened by token ECDH

    # A restart finds the key in the token; a revocation destroys it there.
    restarted = Pkcs11KeyBackend(softhsm.module, token_label=softhsm.token_label, user_pin=softhsm.user_pin,
                                 prefix=token.prefix)  # fmt: skip
    again = EntityNode(store, clock=dep.clock, rng=dep.rng, keys=restarted)
    assert again.binding(record.binding_id).private_key.public_key == record.entity_b.semi_public_key
    dep.client.nodes[access.endpoint] = again
    dep.controller.revoke(record.binding_id, "module replaced")
    assert restarted.names() == [] and again.binding(record.binding_id) is None
    restarted.close()


def test_a_failed_record_write_takes_the_token_key_back(token):
    dep = InMemoryDeployment(seed=32, modules=0)
    store = KeyStore.in_memory(reproducible=True)
    access = module_access(3)
    module = EntityNode.provision(store, access_data=access, controller_key=dep.controller_key.public_key,
                                  clock=dep.clock, rng=dep.rng, keys=token)  # fmt: skip
    dep.client.nodes[access.endpoint] = module
    put_record = store.put_record

    def failing(name, value):
        if name.startswith("binding/"):
            raise KeyStoreError("disk full")
        return put_record(name, value)

    store.put_record = failing
    with pytest.raises(Exception):  # noqa: B017 - the binding aborts; what matters is what is left
        dep.bind(dep.pack, module)
    assert token.names() == [] and module.machine.bindings == {} and dep.ledger.size == 0


def test_login_and_lookup_failures_are_key_store_errors(softhsm, token):  # noqa: F811
    from modbatt.crypto.pkcs11 import Pkcs11KeyBackend

    with pytest.raises(KeyStoreError, match="another PIN"):  # the process is logged in: PIN still checked
        Pkcs11KeyBackend(softhsm.module, token_label=softhsm.token_label, user_pin="000000")
    with pytest.raises(KeyStoreError, match="no PKCS#11 token"):
        Pkcs11KeyBackend(softhsm.module, token_label="no-such-token", user_pin=softhsm.user_pin)
    with pytest.raises(KeyStoreError, match="no single key"):
        token.load("binding/missing/key")
    with pytest.raises(KeyStoreError, match="no key named"):
        token.delete("binding/missing/key")
    key = token.generate()
    token.store("dup", key)
    with pytest.raises(KeyStoreError, match="already in the token"):
        token.store("dup", token.generate())
