"""compress: distil, prune, quantize, export and profile a PyTorch teacher for a target device."""

import logging

__version__ = "0.2.0"

# transformers imports torchao whenever it is installed (NNCF and ExecuTorch need it); torchao then warns about
# each CUDA kernel library it cannot load on a CPU machine, and torch about enum pytree constants. Neither says
# anything about the user's recipe.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
