"""What the sequence models share: turning user data into a checked, padded batch."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from elbox._validation import as_data, describe
from elbox.data.batches import Batch
from elbox.data.sequences import Sequences

__all__ = ["as_sequences"]


def _numeric(x) -> Tensor:
    """``x`` as a tensor of real numbers (integers for symbols); anything else is a TypeError."""
    if not isinstance(x, Tensor):
        array = np.asarray(x)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"x must be numeric data; received {describe(array)}")
        x = torch.as_tensor(array)
    if x.device.type == "meta":
        raise TypeError(f"x is on the meta device and holds no data; received {describe(x)}")
    if x.is_complex():
        raise TypeError(f"x must be real-valued; received {describe(x)}")
    if x.dtype == torch.bool:
        raise TypeError(f"x must be numeric data (numbers, or integer symbols); received {describe(x)}")
    return x


def as_sequences(model, x, *, event_shape: tuple[int, ...], integer: bool = False, num_inputs: int = 0) -> Sequences:
    """``x`` (a tensor ``[B, T, *event]``, a :class:`Sequences` or a list of ``[T_b, *event]``
    arrays) as a Sequences in the model's dtype, checked once: finite where the mask is set
    (padded entries are zeroed, never read), of the right event shape, and, with ``integer``,
    symbols in ``[0, event_shape[0])`` stored as int64 ``[B, T]``.

    Every call checks (nothing is remembered about the tensors): one pass over the values.
    """
    ref = model._reference()
    if isinstance(x, Batch):  # an entry point's batch of data it has just checked passes as it is
        if x.checked:
            return x.data
        x = x.data
    if isinstance(x, Sequences):
        seqs = x
    elif isinstance(x, list | tuple) and len(x) > 0 and not isinstance(x[0], int | float):
        seqs = Sequences.from_list(x)
    else:
        seqs = Sequences(_numeric(x))
    name = type(model).__name__
    _numeric(seqs.values)
    if len(seqs.values) == 0:
        raise ValueError(f"x must hold at least one sequence for {name}; received {describe(seqs.values)}")
    values, mask = seqs.values.to(ref.device), seqs.mask.to(ref.device)
    want = (None, None) if integer else (None, None, *event_shape)
    if values.dim() != len(want) or any(w is not None and w != g for w, g in zip(want, values.shape)):
        expected = "[B, T]" if integer else "[B, T, " + ", ".join(str(d) for d in event_shape) + "]"
        raise ValueError(f"x must have shape {expected} for {name}; received {describe(values)}")
    valid = mask.reshape(mask.shape + (1,) * (values.dim() - 2))
    if integer:
        if values.is_floating_point():
            values = as_data(torch.where(valid, values, 0), "x")
            if (values != values.round()).any():
                raise ValueError(
                    f"x must hold integer symbols for {name} (categorical emissions); received {describe(values)}"
                )
        values = torch.where(valid, values, 0).long()
        M = event_shape[0]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= M):
            raise ValueError(
                f"x must hold symbols in [0, {M}) for {name}; received values in "
                f"[{int(values.min())}, {int(values.max())}]"
            )
    else:
        if not values.is_floating_point():
            values = values.to(ref.dtype)
        values = as_data(torch.where(valid, values.to(ref.dtype), 0.0), "x")
    inputs = seqs.inputs
    if num_inputs:
        if inputs is None:
            raise ValueError(f"{name} has input_dim={num_inputs}: pass the inputs as Sequences(x, inputs=u)")
        inputs = as_data(inputs, "inputs", ndim=3, dtype=ref.dtype, device=ref.device)
        if inputs.shape[-1] != num_inputs:
            raise ValueError(f"inputs must have shape [B, T, {num_inputs}]; received {describe(inputs)}")
    elif inputs is not None:
        raise ValueError(f"{name} has no inputs (input_dim=0) but the sequences carry inputs {describe(inputs)}")
    checked = Sequences.__new__(Sequences)
    checked.values, checked.mask, checked.inputs = values, mask, inputs
    return checked
