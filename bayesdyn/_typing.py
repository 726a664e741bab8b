"""Shape vocabulary used in docstrings and annotations.

Letters: ``S`` samples, ``E`` ensemble members, ``B`` series, ``T`` observation times,
``U`` solver-grid points, ``D`` observed channels, ``L`` latent dimensions,
``C`` context features, ``H`` hidden units.
"""

from __future__ import annotations

from torch import Tensor

#: Float tensor whose docstring states its shape in the letters above.
FloatTensor = Tensor
#: Bool tensor (masks).
BoolTensor = Tensor
#: Integer index tensor.
LongTensor = Tensor

__all__ = ["BoolTensor", "FloatTensor", "LongTensor"]
