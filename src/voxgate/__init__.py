"""voxgate: a Discord-compatible voice server and client library.

The package has three layers: :mod:`voxgate.protocol` (pure codecs, no I/O),
:mod:`voxgate.server` (the voice gateway and UDP relay) and :mod:`voxgate.client`
(join a voice server, send and receive audio). Server and client share the protocol
core and never import each other.
"""

__version__ = "0.1.0"
