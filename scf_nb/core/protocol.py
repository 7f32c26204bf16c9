"""The client protocol's documented import path (``scf_nb.core.protocol.ClientProtocol``): it lives in
``scf_nb.clients.protocol``, beside the clients that implement it."""

from ..clients.protocol import ClientProtocol as ClientProtocol
from ..clients.protocol import WaitResult as WaitResult
