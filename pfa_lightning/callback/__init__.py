"""The Lightning layer: :class:`PFACallback` compresses inside a fit; :func:`load_compressed` reloads.

Built on the core (``pfa_lightning``); nothing in the core imports this package.
"""

from pfa_lightning.callback.callback import OPTIMIZER_STATES, PFACallback
from pfa_lightning.callback.checkpoint import CHECKPOINT_KEY, load_compressed, restore_architecture
from pfa_lightning.callback.record import Compression

__all__ = ["CHECKPOINT_KEY", "Compression", "OPTIMIZER_STATES", "PFACallback", "load_compressed", "restore_architecture"]
