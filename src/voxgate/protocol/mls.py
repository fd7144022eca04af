"""The MLS wire pieces a DAVE voice gateway needs, as typed values with parse and build.

DAVE.md §2-§3 (RFC 9420 as Discord's clients use it). The gateway is the group's external
sender and its delivery service, never a member: it parses key packages (op 26) and checks
them, builds and signs external Add and Remove proposals (op 27), and reads commits and
Welcomes (op 28) well enough to validate them structurally and route them (op 29, op 30).
Nothing here needs HPKE or a ratchet tree: P-256 ECDSA and SHA-256 from ``cryptography``.

Encoding follows aioquic's ``buffer.py`` / ``tls.py``: one :class:`Reader` and one
:class:`Writer` with a ``pull_*`` / ``push_*`` pair per structure. Each structure is a
frozen dataclass; parsing is the exact inverse of building (variable-length integers
must be minimal, nothing may trail), so ``push_x(parse_x(b)) == b`` for every accepted
``b``. Parsers face hostile bytes: they are linear in the input, every length is checked
against what remains before anything is read, and they raise only :class:`MlsError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from voxgate.protocol.errors import MlsError

#: MLS_128_DHKEMP256_AES128GCM_SHA256_P256, the only suite of DAVE v1 (WP:135-146).
CIPHER_SUITE: Final = 2
#: ProtocolVersion mls10.
MLS_VERSION: Final = 1
#: CredentialType basic: the identity is the user id, 8 bytes big-endian (WP:212).
BASIC_CREDENTIAL: Final = 1
#: The one lifetime DAVE key packages carry (WP:208-216).
LIFETIME_ANY: Final = (0, 2**64 - 1)
#: An uncompressed SEC1 P-256 point: 04 ‖ X ‖ Y.
P256_POINT_SIZE: Final = 65
#: SHA-256 output: the size of a ProposalRef and a KeyPackageRef under suite 2.
REF_SIZE: Final = 32
#: The largest length an MLS variable-size vector can carry (RFC 9420 §2.1.2).
MAX_VARINT: Final = 2**30 - 1


class WireFormat:
    """MLSMessage wire formats (RFC 9420 §6)."""

    PUBLIC_MESSAGE: Final = 1
    PRIVATE_MESSAGE: Final = 2
    WELCOME: Final = 3
    GROUP_INFO: Final = 4
    KEY_PACKAGE: Final = 5


class SenderType:
    MEMBER: Final = 1
    EXTERNAL: Final = 2
    NEW_MEMBER_PROPOSAL: Final = 3
    NEW_MEMBER_COMMIT: Final = 4


class ContentType:
    APPLICATION: Final = 1
    PROPOSAL: Final = 2
    COMMIT: Final = 3


class ProposalType:
    ADD: Final = 1
    UPDATE: Final = 2
    REMOVE: Final = 3
    PSK: Final = 4
    REINIT: Final = 5
    EXTERNAL_INIT: Final = 6
    GROUP_CONTEXT_EXTENSIONS: Final = 7


class LeafNodeSource:
    KEY_PACKAGE: Final = 1
    UPDATE: Final = 2
    COMMIT: Final = 3


#: ProposalOrRef types.
PROPOSAL_INLINE: Final = 1
PROPOSAL_REFERENCE: Final = 2


def group_id_of(channel_id: int) -> bytes:
    """The MLS group id of a voice channel: its id, 8 bytes big-endian (libdave, davey)."""
    return channel_id.to_bytes(8, "big")


def user_identity(user_id: int) -> bytes:
    """A member's basic-credential identity: the user id, 8 bytes big-endian (WP:212)."""
    return user_id.to_bytes(8, "big")


def encode_varint(n: int) -> bytes:
    """An MLS variable-size length (RFC 9420 §2.1.2) in the fewest bytes."""
    if n < 0 or n > MAX_VARINT:
        raise MlsError("vector too long")
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x80000000 | n).to_bytes(4, "big")


class Reader:
    """Reads TLS presentation values from a window of ``data`` without copying it.

    Every ``pull_*`` raises :class:`MlsError` when the bytes run out; a vector's reader
    (:meth:`pull_vector_reader`) is a window on the same buffer, so nested vectors cost
    nothing to open.
    """

    __slots__ = ("_data", "_end", "position")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self.position = start
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self.position

    def eof(self) -> bool:
        return self.position >= self._end

    def expect_end(self) -> None:
        if self.position != self._end:
            raise MlsError("trailing bytes")

    def _take(self, n: int) -> int:
        start = self.position
        if n > self._end - start:
            raise MlsError("truncated")
        self.position = start + n
        return start

    def pull_uint8(self) -> int:
        return self._data[self._take(1)]

    def pull_uint16(self) -> int:
        start = self._take(2)
        return int.from_bytes(self._data[start : start + 2], "big")

    def pull_uint32(self) -> int:
        start = self._take(4)
        return int.from_bytes(self._data[start : start + 4], "big")

    def pull_uint64(self) -> int:
        start = self._take(8)
        return int.from_bytes(self._data[start : start + 8], "big")

    def pull_bytes(self, n: int) -> bytes:
        start = self._take(n)
        return self._data[start : start + n]

    def pull_varint(self) -> int:
        first = self.pull_uint8()
        prefix = first >> 6
        if prefix == 0:
            return first
        if prefix == 1:
            value = (first & 0x3F) << 8 | self.pull_uint8()
            if value < 0x40:
                raise MlsError("non-minimal length")
            return value
        if prefix == 2:
            value = (first & 0x3F) << 24 | self.pull_uint8() << 16 | self.pull_uint16()
            if value < 0x4000:
                raise MlsError("non-minimal length")
            return value
        raise MlsError("bad length prefix")

    def pull_vector(self) -> bytes:
        """An ``opaque<V>``: a varint length, then that many bytes."""
        return self.pull_bytes(self.pull_varint())

    def pull_vector_reader(self) -> Reader:
        """The body of a ``T items<V>`` as a reader of its own, consumed from this one."""
        n = self.pull_varint()
        start = self._take(n)
        return Reader(self._data, start, start + n)

    def slice(self, start: int, end: int) -> bytes:
        """The bytes between two positions of this reader (for raw and TBS bytes)."""
        return self._data[start:end]


class Writer:
    """Builds TLS presentation values; :attr:`data` is the result so far."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    @property
    def data(self) -> bytes:
        return b"".join(self._parts)

    def push_uint8(self, value: int) -> None:
        self._parts.append(value.to_bytes(1, "big"))

    def push_uint16(self, value: int) -> None:
        self._parts.append(value.to_bytes(2, "big"))

    def push_uint32(self, value: int) -> None:
        self._parts.append(value.to_bytes(4, "big"))

    def push_uint64(self, value: int) -> None:
        self._parts.append(value.to_bytes(8, "big"))

    def push_bytes(self, value: bytes) -> None:
        self._parts.append(bytes(value))

    def push_varint(self, n: int) -> None:
        self._parts.append(encode_varint(n))

    def push_vector(self, value: bytes) -> None:
        self._parts.append(encode_varint(len(value)))
        self._parts.append(bytes(value))


_T = TypeVar("_T")


def _pull_list(reader: Reader, pull_item: Callable[[Reader], _T]) -> tuple[_T, ...]:
    body = reader.pull_vector_reader()
    items: list[_T] = []
    while not body.eof():
        items.append(pull_item(body))
    return tuple(items)


def _push_list(
    writer: Writer, items: Sequence[_T], push_item: Callable[[Writer, _T], None]
) -> None:
    inner = Writer()
    for item in items:
        push_item(inner, item)
    writer.push_vector(inner.data)


def _pull_uint16_list(reader: Reader) -> tuple[int, ...]:
    return _pull_list(reader, Reader.pull_uint16)


def _push_uint16_list(writer: Writer, values: Sequence[int]) -> None:
    _push_list(writer, values, Writer.push_uint16)


def _build(push: Callable[[Writer, _T], None], value: _T) -> bytes:
    writer = Writer()
    push(writer, value)
    return writer.data


def _parse_all(data: bytes, pull: Callable[[Reader], _T]) -> _T:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MlsError("not bytes")
    reader = Reader(bytes(data))
    value = pull(reader)
    reader.expect_end()
    return value


# -- signatures and references (RFC 9420 §5.1.2, §5.2) --------------------------------


def _sign_content(label: str, content: bytes) -> bytes:
    writer = Writer()
    writer.push_vector(b"MLS 1.0 " + label.encode())
    writer.push_vector(content)
    return writer.data


def ref_hash(label: str, value: bytes) -> bytes:
    """RefHash(label, value) = SHA-256(label<V> ‖ value<V>) under suite 2."""
    writer = Writer()
    writer.push_vector(label.encode())
    writer.push_vector(value)
    return hashlib.sha256(writer.data).digest()


def load_signature_key(key: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 SignaturePublicKey (uncompressed point) as a key object; MlsError if invalid."""
    if len(key) != P256_POINT_SIZE or key[0] != 4:
        raise MlsError("bad signature key")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    except ValueError:
        raise MlsError("bad signature key") from None


def sign_with_label(private_key: ec.EllipticCurvePrivateKey, label: str, content: bytes) -> bytes:
    """SignWithLabel: DER ECDSA-P256-SHA256 over ``("MLS 1.0 " ‖ label)<V> ‖ content<V>``."""
    return private_key.sign(_sign_content(label, content), ec.ECDSA(hashes.SHA256()))


def verify_with_label(
    signature_key: bytes, label: str, content: bytes, signature: bytes, reason: str
) -> None:
    """VerifyWithLabel; raises ``MlsError(reason)`` when the DER signature does not verify."""
    key = load_signature_key(signature_key)
    try:
        key.verify(signature, _sign_content(label, content), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise MlsError(reason) from None


# -- Credential, Capabilities, Extensions, LeafNode, KeyPackage (RFC 9420 §5.3, §7.2, §10) --


@dataclass(frozen=True)
class Credential:
    """``u16 credential_type ‖ opaque<V>``: the identity of a basic credential, or the
    certificate vector's body of an X.509 one (kept opaque; DAVE accepts only basic)."""

    credential_type: int
    identity: bytes


def pull_credential(reader: Reader) -> Credential:
    credential_type = reader.pull_uint16()
    if credential_type not in (1, 2):
        raise MlsError("unknown credential type")
    return Credential(credential_type, reader.pull_vector())


def push_credential(writer: Writer, credential: Credential) -> None:
    writer.push_uint16(credential.credential_type)
    writer.push_vector(credential.identity)


@dataclass(frozen=True)
class Capabilities:
    versions: tuple[int, ...] = (MLS_VERSION,)
    cipher_suites: tuple[int, ...] = (CIPHER_SUITE,)
    extensions: tuple[int, ...] = ()
    proposals: tuple[int, ...] = ()
    credentials: tuple[int, ...] = (BASIC_CREDENTIAL,)


def pull_capabilities(reader: Reader) -> Capabilities:
    return Capabilities(*(_pull_uint16_list(reader) for _ in range(5)))


def push_capabilities(writer: Writer, capabilities: Capabilities) -> None:
    for values in (
        capabilities.versions,
        capabilities.cipher_suites,
        capabilities.extensions,
        capabilities.proposals,
        capabilities.credentials,
    ):
        _push_uint16_list(writer, values)


@dataclass(frozen=True)
class Extension:
    extension_type: int
    extension_data: bytes


def pull_extension(reader: Reader) -> Extension:
    return Extension(reader.pull_uint16(), reader.pull_vector())


def push_extension(writer: Writer, extension: Extension) -> None:
    writer.push_uint16(extension.extension_type)
    writer.push_vector(extension.extension_data)


def pull_extensions(reader: Reader) -> tuple[Extension, ...]:
    return _pull_list(reader, pull_extension)


def push_extensions(writer: Writer, extensions: Sequence[Extension]) -> None:
    _push_list(writer, extensions, push_extension)


@dataclass(frozen=True)
class LeafNode:
    """A member's leaf (RFC 9420 §7.2).

    ``lifetime`` is set for source key_package (1), ``parent_hash`` for source commit (3).
    ``raw`` is the encoded LeafNode, ``tbs`` the same minus its signature (the
    LeafNodeTBS content of a key_package leaf); both are derived, not compared.
    """

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities = Capabilities()
    leaf_node_source: int = LeafNodeSource.KEY_PACKAGE
    lifetime: tuple[int, int] | None = LIFETIME_ANY
    parent_hash: bytes | None = None
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""
    raw: bytes = field(default=b"", compare=False, repr=False)
    tbs: bytes = field(default=b"", compare=False, repr=False)


def pull_leaf_node(reader: Reader) -> LeafNode:
    start = reader.position
    encryption_key = reader.pull_vector()
    signature_key = reader.pull_vector()
    credential = pull_credential(reader)
    capabilities = pull_capabilities(reader)
    source = reader.pull_uint8()
    lifetime: tuple[int, int] | None = None
    parent_hash: bytes | None = None
    if source == LeafNodeSource.KEY_PACKAGE:
        lifetime = (reader.pull_uint64(), reader.pull_uint64())
    elif source == LeafNodeSource.COMMIT:
        parent_hash = reader.pull_vector()
    elif source != LeafNodeSource.UPDATE:
        raise MlsError("unknown leaf node source")
    extensions = pull_extensions(reader)
    signed_end = reader.position
    signature = reader.pull_vector()
    return LeafNode(
        encryption_key,
        signature_key,
        credential,
        capabilities,
        source,
        lifetime,
        parent_hash,
        extensions,
        signature,
        raw=reader.slice(start, reader.position),
        tbs=reader.slice(start, signed_end),
    )


def _push_leaf_node_content(writer: Writer, leaf: LeafNode) -> None:
    writer.push_vector(leaf.encryption_key)
    writer.push_vector(leaf.signature_key)
    push_credential(writer, leaf.credential)
    push_capabilities(writer, leaf.capabilities)
    writer.push_uint8(leaf.leaf_node_source)
    if leaf.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
        not_before, not_after = leaf.lifetime or LIFETIME_ANY
        writer.push_uint64(not_before)
        writer.push_uint64(not_after)
    elif leaf.leaf_node_source == LeafNodeSource.COMMIT:
        writer.push_vector(leaf.parent_hash or b"")
    push_extensions(writer, leaf.extensions)


def push_leaf_node(writer: Writer, leaf: LeafNode) -> None:
    _push_leaf_node_content(writer, leaf)
    writer.push_vector(leaf.signature)


def parse_leaf_node(data: bytes) -> LeafNode:
    return _parse_all(data, pull_leaf_node)


def build_leaf_node(leaf: LeafNode) -> bytes:
    return _build(push_leaf_node, leaf)


@dataclass(frozen=True)
class KeyPackage:
    """A KeyPackage (RFC 9420 §10), as op 26 carries it.

    ``extensions`` is the body of the extensions vector (each ``u16 type ‖ data<V>``;
    :func:`pull_extensions` reads it); ``raw`` is the bare KeyPackage bytes, what an Add
    proposal carries and what :func:`key_package_ref` hashes; ``tbs`` is ``raw`` minus the
    signature (the KeyPackageTBS content).
    """

    version: int
    cipher_suite: int
    init_key: bytes
    leaf_node: LeafNode
    extensions: bytes
    signature: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)
    tbs: bytes = field(default=b"", compare=False, repr=False)

    @property
    def user_id(self) -> int | None:
        """The user id of a basic credential of 8 bytes, else None."""
        credential = self.leaf_node.credential
        if credential.credential_type != BASIC_CREDENTIAL or len(credential.identity) != 8:
            return None
        return int.from_bytes(credential.identity, "big")

    @property
    def encoded(self) -> bytes:
        """The bare KeyPackage bytes (``raw`` when parsed, else built)."""
        return self.raw or build_key_package(self)


def pull_key_package(reader: Reader) -> KeyPackage:
    start = reader.position
    version = reader.pull_uint16()
    cipher_suite = reader.pull_uint16()
    init_key = reader.pull_vector()
    leaf_node = pull_leaf_node(reader)
    extensions_reader = reader.pull_vector_reader()
    extensions = extensions_reader.slice(extensions_reader.position, reader.position)
    while not extensions_reader.eof():
        pull_extension(extensions_reader)
    signed_end = reader.position
    signature = reader.pull_vector()
    return KeyPackage(
        version,
        cipher_suite,
        init_key,
        leaf_node,
        extensions,
        signature,
        raw=reader.slice(start, reader.position),
        tbs=reader.slice(start, signed_end),
    )


def _push_key_package_content(writer: Writer, kp: KeyPackage) -> None:
    writer.push_uint16(kp.version)
    writer.push_uint16(kp.cipher_suite)
    writer.push_vector(kp.init_key)
    push_leaf_node(writer, kp.leaf_node)
    writer.push_vector(kp.extensions)


def push_key_package(writer: Writer, kp: KeyPackage) -> None:
    _push_key_package_content(writer, kp)
    writer.push_vector(kp.signature)


def build_key_package(kp: KeyPackage) -> bytes:
    return _build(push_key_package, kp)


def parse_key_package(data: bytes) -> KeyPackage:
    """The KeyPackage of an op 26 payload, bare or wrapped in an MLSMessage.

    libdave and davey send it bare (``00 01 00 02`` …), WP:1005-1018 says MLSMessage
    (``00 01 00 05`` …): bytes 2-3 tell them apart (DAVE.md §2). Raises MlsError.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MlsError("not bytes")
    data = bytes(data)
    if data[:4] == b"\x00\x01\x00\x05":
        try:
            return _parse_all(data[4:], pull_key_package)
        except MlsError:
            pass  # perhaps a bare KeyPackage of cipher suite 5: let its checks say so
    return _parse_all(data, pull_key_package)


def key_package_ref(kp: KeyPackage) -> bytes:
    """KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage): 32 bytes."""
    return ref_hash("MLS 1.0 KeyPackage Reference", kp.encoded)


def _check_hpke_key(key: bytes, reason: str) -> None:
    if len(key) != P256_POINT_SIZE or key[0] != 4:
        raise MlsError(reason)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    except ValueError:
        raise MlsError(reason) from None


def verify_key_package(kp: KeyPackage, user_id: int) -> None:
    """Check an op 26 key package as DAVE requires before proposing it (DAVE.md §3.3).

    Raises ``MlsError(reason)`` unless: MLS 1.0, cipher suite 2, a key_package leaf with
    a basic credential whose identity is ``user_identity(user_id)``, lifetime
    0..2^64-1, valid P-256 init and encryption keys, and both the LeafNodeTBS and the
    KeyPackageTBS signatures verify under the leaf's signature key.
    """
    leaf = kp.leaf_node
    if kp.version != MLS_VERSION:
        raise MlsError("unsupported MLS version")
    if kp.cipher_suite != CIPHER_SUITE:
        raise MlsError("wrong cipher suite")
    if leaf.credential.credential_type != BASIC_CREDENTIAL:
        raise MlsError("credential not basic")
    if leaf.credential.identity != user_identity(user_id):
        raise MlsError("identity mismatch")
    if leaf.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
        raise MlsError("leaf source not key_package")
    if leaf.lifetime != LIFETIME_ANY:
        raise MlsError("bad lifetime")
    _check_hpke_key(kp.init_key, "bad init key")
    _check_hpke_key(leaf.encryption_key, "bad encryption key")
    if kp.init_key == leaf.encryption_key:
        raise MlsError("init key equals encryption key")
    leaf_tbs = leaf.tbs or _build(_push_leaf_node_content, leaf)
    verify_with_label(
        leaf.signature_key, "LeafNodeTBS", leaf_tbs, leaf.signature, "bad leaf node signature"
    )
    kp_tbs = kp.tbs or _build(_push_key_package_content, kp)
    verify_with_label(
        leaf.signature_key, "KeyPackageTBS", kp_tbs, kp.signature, "bad key package signature"
    )


# -- the external sender (op 25) and its proposals (op 27) ------------------------------


def pull_external_sender(reader: Reader) -> tuple[bytes, Credential]:
    return reader.pull_vector(), pull_credential(reader)


def parse_external_sender(data: bytes) -> tuple[bytes, Credential]:
    """An op 25 payload: (signature_key, credential). Raises MlsError."""
    return _parse_all(data, pull_external_sender)


def build_external_sender(signature_key: bytes, credential: Credential) -> bytes:
    writer = Writer()
    writer.push_vector(signature_key)
    push_credential(writer, credential)
    return writer.data


@dataclass(frozen=True)
class Proposal:
    """A signed external proposal, ready for op 27.

    ``message`` is the whole MLSMessage (PublicMessage), ``ref`` its ProposalRef (what a
    commit cites and what op 27 revoke names).
    """

    kind: Literal["add", "remove"]
    message: bytes
    ref: bytes
    key_package: KeyPackage | None = None
    removed_leaf: int | None = None


def _external_framed_content(group_id: bytes, epoch: int, proposal: bytes) -> bytes:
    writer = Writer()
    writer.push_vector(group_id)
    writer.push_uint64(epoch)
    writer.push_uint8(SenderType.EXTERNAL)
    writer.push_uint32(0)  # sender_index: the one entry of external_senders
    writer.push_vector(b"")  # authenticated_data
    writer.push_uint8(ContentType.PROPOSAL)
    writer.push_bytes(proposal)
    return writer.data


def proposal_ref_of(message: bytes) -> bytes:
    """ProposalRef of a PublicMessage without membership tag (an external proposal).

    RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent), and AuthenticatedContent
    is the MLSMessage minus its version: ``wire_format ‖ FramedContent ‖ signature<V>``.
    """
    return ref_hash("MLS 1.0 Proposal Reference", message[2:])


class ExternalSender:
    """The gateway's MLS external sender: one P-256 key per node (DAVE.md §3.1-§3.2).

    Its proposals are signed over a FramedContentTBS without GroupContext, so one Add
    fits every pending group of a channel at epoch 0::

        sender = ExternalSender()
        op25 = sender.package()
        kp = parse_key_package(op26)
        verify_key_package(kp, user_id)
        add = sender.propose_add(group_id_of(channel_id), epoch, kp)
        op27 = b"\x00" + proposals_append([add])      # later: b"\x01" + proposals_revoke([add.ref])
    """

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey | None = None, identity: bytes = b"\x00"
    ) -> None:
        if private_key is None:
            private_key = ec.generate_private_key(ec.SECP256R1())
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("the external sender key must be P-256")
        self.private_key = private_key
        self.credential = Credential(BASIC_CREDENTIAL, bytes(identity))
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.public_key: bytes = private_key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        self._package = build_external_sender(self.public_key, self.credential)

    def package(self) -> bytes:
        """The op 25 payload: ``signature_key<V> ‖ Credential``."""
        return self._package

    def _sign(self, group_id: bytes, epoch: int, proposal: bytes) -> tuple[bytes, bytes]:
        content = _external_framed_content(group_id, epoch, proposal)
        tbs = b"\x00\x01\x00\x01" + content  # version mls10, wire_format public_message
        signature = sign_with_label(self.private_key, "FramedContentTBS", tbs)
        message = tbs + encode_varint(len(signature)) + signature
        return message, proposal_ref_of(message)

    def propose_add(self, group_id: bytes, epoch: int, kp: KeyPackage) -> Proposal:
        """An external Add of ``kp`` (its bytes unchanged) at ``epoch``."""
        message, ref = self._sign(group_id, epoch, ProposalType.ADD.to_bytes(2, "big") + kp.encoded)
        return Proposal("add", message, ref, key_package=kp)

    def propose_remove(self, group_id: bytes, epoch: int, leaf_index: int) -> Proposal:
        """An external Remove of the member at ``leaf_index`` at ``epoch``."""
        body = ProposalType.REMOVE.to_bytes(2, "big") + leaf_index.to_bytes(4, "big")
        message, ref = self._sign(group_id, epoch, body)
        return Proposal("remove", message, ref, removed_leaf=leaf_index)


def proposals_append(proposals: Sequence[Proposal] | Sequence[bytes]) -> bytes:
    """The op 27 append payload after the optype byte: ``MLSMessage proposal_messages<V>``."""
    body = b"".join(p.message if isinstance(p, Proposal) else bytes(p) for p in proposals)
    return encode_varint(len(body)) + body


def proposals_revoke(refs: Sequence[bytes]) -> bytes:
    """The op 27 revoke payload after the optype byte: ``ProposalRef proposal_refs<V>``."""
    writer = Writer()
    for ref in refs:
        writer.push_vector(ref)
    body = writer.data
    return encode_varint(len(body)) + body


# -- proposals, commits and PublicMessages (RFC 9420 §6, §12) ---------------------------


@dataclass(frozen=True)
class InlineProposal:
    """A Proposal by value. ``body`` is everything after the u16 type, as sent; the
    fields DAVE cares about are decoded from it."""

    proposal_type: int
    body: bytes
    key_package: KeyPackage | None = None
    removed_leaf: int | None = None


def _pull_psk_id(reader: Reader) -> None:
    psk_type = reader.pull_uint8()
    if psk_type == 1:  # external
        reader.pull_vector()
    elif psk_type == 2:  # resumption
        reader.pull_uint8()
        reader.pull_vector()
        reader.pull_uint64()
    else:
        raise MlsError("unknown psk type")
    reader.pull_vector()  # psk_nonce


def pull_proposal(reader: Reader) -> InlineProposal:
    proposal_type = reader.pull_uint16()
    start = reader.position
    key_package: KeyPackage | None = None
    removed_leaf: int | None = None
    if proposal_type == ProposalType.ADD:
        key_package = pull_key_package(reader)
    elif proposal_type == ProposalType.UPDATE:
        pull_leaf_node(reader)
    elif proposal_type == ProposalType.REMOVE:
        removed_leaf = reader.pull_uint32()
    elif proposal_type == ProposalType.PSK:
        _pull_psk_id(reader)
    elif proposal_type == ProposalType.REINIT:
        reader.pull_vector()
        reader.pull_uint16()
        reader.pull_uint16()
        pull_extensions(reader)
    elif proposal_type == ProposalType.EXTERNAL_INIT:
        reader.pull_vector()
    elif proposal_type == ProposalType.GROUP_CONTEXT_EXTENSIONS:
        pull_extensions(reader)
    else:
        raise MlsError("unknown proposal type")
    body = reader.slice(start, reader.position)
    return InlineProposal(proposal_type, body, key_package, removed_leaf)


def push_proposal(writer: Writer, proposal: InlineProposal) -> None:
    writer.push_uint16(proposal.proposal_type)
    writer.push_bytes(proposal.body)


@dataclass(frozen=True)
class ProposalOrRef:
    """One entry of a Commit's proposals: ``type`` 1 inline (``proposal``), 2 by ``ref``.

    ``raw`` is the entry as encoded."""

    type: int
    ref: bytes | None
    raw: bytes = field(default=b"", compare=False, repr=False)
    proposal: InlineProposal | None = None


def pull_proposal_or_ref(reader: Reader) -> ProposalOrRef:
    start = reader.position
    kind = reader.pull_uint8()
    if kind == PROPOSAL_INLINE:
        proposal = pull_proposal(reader)
        return ProposalOrRef(kind, None, reader.slice(start, reader.position), proposal)
    if kind == PROPOSAL_REFERENCE:
        ref = reader.pull_vector()
        return ProposalOrRef(kind, ref, reader.slice(start, reader.position))
    raise MlsError("bad proposal-or-ref type")


def push_proposal_or_ref(writer: Writer, entry: ProposalOrRef) -> None:
    writer.push_uint8(entry.type)
    if entry.type == PROPOSAL_INLINE:
        if entry.proposal is None:
            raise MlsError("inline entry without proposal")
        push_proposal(writer, entry.proposal)
    else:
        writer.push_vector(entry.ref or b"")


@dataclass(frozen=True)
class UpdatePath:
    """A commit's UpdatePath: the committer's new leaf, and the path nodes' vector body
    (``UpdatePathNode nodes<V>``, opaque to the gateway)."""

    leaf_node: LeafNode
    nodes: bytes


def pull_update_path(reader: Reader) -> UpdatePath:
    leaf = pull_leaf_node(reader)
    nodes = reader.pull_vector_reader()
    body = nodes.slice(nodes.position, reader.position)
    while not nodes.eof():  # UpdatePathNode: encryption_key<V>, HPKECiphertext secrets<V>
        nodes.pull_vector()
        secrets = nodes.pull_vector_reader()
        while not secrets.eof():
            secrets.pull_vector()
            secrets.pull_vector()
    return UpdatePath(leaf, body)


def push_update_path(writer: Writer, path: UpdatePath) -> None:
    push_leaf_node(writer, path.leaf_node)
    writer.push_vector(path.nodes)


@dataclass(frozen=True)
class PublicMessage:
    """An MLSMessage with wire_format public_message (RFC 9420 §6.2).

    ``content`` is an :class:`InlineProposal` (content_type 2), a :class:`CommitContent`
    (3) or the application data (1). ``tbs`` is the FramedContentTBS without the
    GroupContext (what an external sender signs); ``raw`` the whole message.
    """

    group_id: bytes
    epoch: int
    sender_type: int
    sender_index: int
    authenticated_data: bytes
    content_type: int
    content: InlineProposal | CommitContent | bytes
    signature: bytes
    confirmation_tag: bytes | None = None
    membership_tag: bytes | None = None
    raw: bytes = field(default=b"", compare=False, repr=False)
    tbs: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class CommitContent:
    proposals: tuple[ProposalOrRef, ...]
    path: UpdatePath | None


def pull_commit_content(reader: Reader) -> CommitContent:
    proposals = _pull_list(reader, pull_proposal_or_ref)
    present = reader.pull_uint8()
    if present == 0:
        return CommitContent(proposals, None)
    if present == 1:
        return CommitContent(proposals, pull_update_path(reader))
    raise MlsError("bad optional flag")


def push_commit_content(writer: Writer, commit: CommitContent) -> None:
    _push_list(writer, commit.proposals, push_proposal_or_ref)
    if commit.path is None:
        writer.push_uint8(0)
    else:
        writer.push_uint8(1)
        push_update_path(writer, commit.path)


def pull_public_message(reader: Reader) -> PublicMessage:
    start = reader.position
    if reader.pull_uint16() != MLS_VERSION:
        raise MlsError("unsupported MLS version")
    if reader.pull_uint16() != WireFormat.PUBLIC_MESSAGE:
        raise MlsError("not a public message")
    group_id = reader.pull_vector()
    epoch = reader.pull_uint64()
    sender_type = reader.pull_uint8()
    sender_index = 0
    if sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
        sender_index = reader.pull_uint32()
    elif sender_type not in (SenderType.NEW_MEMBER_PROPOSAL, SenderType.NEW_MEMBER_COMMIT):
        raise MlsError("unknown sender type")
    authenticated_data = reader.pull_vector()
    content_type = reader.pull_uint8()
    content: InlineProposal | CommitContent | bytes
    if content_type == ContentType.PROPOSAL:
        content = pull_proposal(reader)
    elif content_type == ContentType.COMMIT:
        content = pull_commit_content(reader)
    elif content_type == ContentType.APPLICATION:
        content = reader.pull_vector()
    else:
        raise MlsError("unknown content type")
    signed_end = reader.position
    signature = reader.pull_vector()
    confirmation_tag = reader.pull_vector() if content_type == ContentType.COMMIT else None
    membership_tag = reader.pull_vector() if sender_type == SenderType.MEMBER else None
    return PublicMessage(
        group_id,
        epoch,
        sender_type,
        sender_index,
        authenticated_data,
        content_type,
        content,
        signature,
        confirmation_tag,
        membership_tag,
        raw=reader.slice(start, reader.position),
        tbs=reader.slice(start, signed_end),
    )


def push_public_message(writer: Writer, message: PublicMessage) -> None:
    writer.push_uint16(MLS_VERSION)
    writer.push_uint16(WireFormat.PUBLIC_MESSAGE)
    writer.push_vector(message.group_id)
    writer.push_uint64(message.epoch)
    writer.push_uint8(message.sender_type)
    if message.sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
        writer.push_uint32(message.sender_index)
    writer.push_vector(message.authenticated_data)
    writer.push_uint8(message.content_type)
    content = message.content
    if isinstance(content, InlineProposal):
        push_proposal(writer, content)
    elif isinstance(content, CommitContent):
        push_commit_content(writer, content)
    else:
        writer.push_vector(content)
    writer.push_vector(message.signature)
    if message.content_type == ContentType.COMMIT:
        writer.push_vector(message.confirmation_tag or b"")
    if message.sender_type == SenderType.MEMBER:
        writer.push_vector(message.membership_tag or b"")


def parse_public_message(data: bytes) -> PublicMessage:
    return _parse_all(data, pull_public_message)


def build_public_message(message: PublicMessage) -> bytes:
    return _build(push_public_message, message)


@dataclass(frozen=True)
class ParsedProposal:
    """An external proposal as op 27 carries it, decoded (for golden vectors, clients)."""

    group_id: bytes
    epoch: int
    sender_type: int
    sender_index: int
    kind: Literal["add", "remove", "other"]
    proposal_type: int
    key_package: KeyPackage | None
    removed_leaf: int | None
    signature: bytes
    ref: bytes
    message: bytes
    tbs: bytes


def _proposal_view(message: PublicMessage) -> ParsedProposal:
    content = message.content
    if not isinstance(content, InlineProposal):
        raise MlsError("not a proposal")
    kind: Literal["add", "remove", "other"] = (
        "add"
        if content.proposal_type == ProposalType.ADD
        else "remove"
        if content.proposal_type == ProposalType.REMOVE
        else "other"
    )
    # The ref hashes AuthenticatedContent: the message minus version and membership tag.
    authenticated_end = len(message.raw)
    if message.membership_tag is not None:
        authenticated_end -= len(encode_varint(len(message.membership_tag))) + len(
            message.membership_tag
        )
    ref = ref_hash("MLS 1.0 Proposal Reference", message.raw[2:authenticated_end])
    return ParsedProposal(
        message.group_id,
        message.epoch,
        message.sender_type,
        message.sender_index,
        kind,
        content.proposal_type,
        content.key_package,
        content.removed_leaf,
        message.signature,
        ref,
        message.raw,
        message.tbs,
    )


def parse_proposal_message(data: bytes) -> ParsedProposal:
    """One MLSMessage of op 27 append, decoded. Raises MlsError."""
    return _proposal_view(parse_public_message(data))


def verify_proposal(message: bytes, external_sender_key: bytes) -> None:
    """Check an external proposal's signature under the external sender's key; MlsError."""
    parsed = parse_proposal_message(message)
    if parsed.sender_type != SenderType.EXTERNAL:
        raise MlsError("not an external proposal")
    verify_with_label(
        external_sender_key,
        "FramedContentTBS",
        parsed.tbs,
        parsed.signature,
        "bad proposal signature",
    )


def parse_proposals_append(payload: bytes) -> tuple[ParsedProposal, ...]:
    """The op 27 append payload after the optype byte, each MLSMessage decoded."""

    def pull(reader: Reader) -> tuple[ParsedProposal, ...]:
        return _pull_list(reader, lambda r: _proposal_view(pull_public_message(r)))

    return _parse_all(payload, pull)


def parse_proposals_revoke(payload: bytes) -> tuple[bytes, ...]:
    """The op 27 revoke payload after the optype byte: the ProposalRefs."""
    return _parse_all(payload, lambda reader: _pull_list(reader, Reader.pull_vector))


# -- op 28: commit and Welcome (DAVE.md §3.5) -------------------------------------------


@dataclass(frozen=True)
class Commit:
    """A Commit in a PublicMessage, as op 28 and op 29 carry it. ``raw`` is the whole
    MLSMessage; ``message`` the full decoded PublicMessage."""

    version: int
    wire_format: int
    group_id: bytes
    epoch: int
    sender_type: int
    sender_leaf: int
    proposals: tuple[ProposalOrRef, ...]
    update_path_leaf: LeafNode | None
    raw: bytes = field(compare=False, repr=False)
    message: PublicMessage = field(compare=False, repr=False)

    @property
    def proposal_refs(self) -> tuple[bytes, ...]:
        """The refs cited, in order (inline entries are skipped)."""
        return tuple(entry.ref for entry in self.proposals if entry.ref is not None)

    @property
    def has_inline_proposals(self) -> bool:
        return any(entry.type == PROPOSAL_INLINE for entry in self.proposals)


def pull_commit(reader: Reader) -> Commit:
    message = pull_public_message(reader)
    content = message.content
    if not isinstance(content, CommitContent):
        raise MlsError("not a commit")
    return Commit(
        MLS_VERSION,
        WireFormat.PUBLIC_MESSAGE,
        message.group_id,
        message.epoch,
        message.sender_type,
        message.sender_index,
        content.proposals,
        content.path.leaf_node if content.path else None,
        raw=message.raw,
        message=message,
    )


def parse_commit(data: bytes) -> Commit:
    """A Commit MLSMessage (the body of op 29). Raises MlsError."""
    return _parse_all(data, pull_commit)


@dataclass(frozen=True)
class WelcomeSecret:
    """EncryptedGroupSecrets: ``new_member`` is the KeyPackageRef it is for."""

    new_member: bytes
    kem_output: bytes
    ciphertext: bytes


def pull_welcome_secret(reader: Reader) -> WelcomeSecret:
    return WelcomeSecret(reader.pull_vector(), reader.pull_vector(), reader.pull_vector())


def push_welcome_secret(writer: Writer, secret: WelcomeSecret) -> None:
    writer.push_vector(secret.new_member)
    writer.push_vector(secret.kem_output)
    writer.push_vector(secret.ciphertext)


@dataclass(frozen=True)
class Welcome:
    """A bare Welcome (RFC 9420 §12.4.3.1), as op 28 ends and op 30 carries it."""

    cipher_suite: int
    secrets: tuple[WelcomeSecret, ...]
    encrypted_group_info: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def new_members(self) -> tuple[bytes, ...]:
        return tuple(secret.new_member for secret in self.secrets)


def pull_welcome(reader: Reader) -> Welcome:
    start = reader.position
    cipher_suite = reader.pull_uint16()
    secrets = _pull_list(reader, pull_welcome_secret)
    encrypted_group_info = reader.pull_vector()
    return Welcome(
        cipher_suite, secrets, encrypted_group_info, raw=reader.slice(start, reader.position)
    )


def push_welcome(writer: Writer, welcome: Welcome) -> None:
    writer.push_uint16(welcome.cipher_suite)
    _push_list(writer, welcome.secrets, push_welcome_secret)
    writer.push_vector(welcome.encrypted_group_info)


def parse_welcome(data: bytes) -> Welcome:
    return _parse_all(data, pull_welcome)


def build_welcome(welcome: Welcome) -> bytes:
    return _build(push_welcome, welcome)


def split_commit_welcome(data: bytes) -> tuple[Commit, Welcome | None]:
    """The op 28 payload: a commit MLSMessage, then a bare Welcome when it adds members.

    Raises MlsError on anything else (garbage, a non-commit, trailing bytes).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MlsError("not bytes")
    reader = Reader(bytes(data))
    commit = pull_commit(reader)
    if reader.eof():
        return commit, None
    welcome = pull_welcome(reader)
    reader.expect_end()
    return commit, welcome


def targeted_welcome(welcome: Welcome, key_package_ref: bytes) -> bytes:
    """The Welcome with only ``key_package_ref``'s secret (WP:1085-1098 "targeted subset").

    Raises MlsError when the Welcome has no secret for it.
    """
    for secret in welcome.secrets:
        if secret.new_member == key_package_ref:
            return build_welcome(
                Welcome(welcome.cipher_suite, (secret,), welcome.encrypted_group_info)
            )
    raise MlsError("welcome has no secret for that key package")
