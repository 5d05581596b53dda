"""replearn: representation learning end to end on a native C++/CUDA core.

    import replearn
    y = replearn.ops.layer_norm(x, [512])          # native kernels, torch's semantics
    norm = replearn.nn.LayerNorm(512)               # drop-in for torch.nn.LayerNorm

See README.md for the op table and docs/design.md for the design decisions.
"""

__version__ = "0.1.0"

from . import _native, nn, ops, optim  # noqa: E402  (ops registers torch.ops.replearn.* on import)
from . import models  # noqa: E402  (after nn: the zoo is built from replearn.nn's layers)

__all__ = ["models", "nn", "ops", "optim", "__version__"]
