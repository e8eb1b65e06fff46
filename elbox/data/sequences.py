"""A batch of sequences of different lengths, padded to one tensor with a prefix mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from elbox._validation import as_data, describe

__all__ = ["Sequences", "as_sequences"]


class Sequences:
    """B sequences padded to a common length T: ``values [B, T, *event]``, ``mask [B, T]``.

    ``mask[b, t]`` is True where step t of sequence b exists; it must be a *prefix* mask (each
    row True up to the sequence's length, then False), which is what ragged lengths mean. The
    padded entries of ``values`` are never read as data. ``inputs [B, T, U]`` are optional
    exogenous inputs (controls), used by :class:`~elbox.models.LinearGaussianSSM`; ``rewards [B, T]``
    optional per-step rewards (``rewards[:, t]`` received on arriving at step t) and ``continues [B, T]``
    optional continuation flags (``continues[:, t]`` 0 where step t is terminal, the episode ended
    there, and 1 where it goes on), both read by :class:`~elbox.models.WorldModel`.

    A NaN in ``values`` is a missing observation. The models that handle gaps (the LGSSM, the
    HMM) check the data with :func:`as_sequences` ``(missing=True)``, which zeroes those
    entries and records where they were in ``missing`` (``[B, T, *event]`` booleans, ``[B, T]``
    for symbols; None when nothing is missing); every other model refuses a NaN.

    The sequence models accept a plain tensor ``[B, T, *event]`` (every sequence of length
    T), a :class:`Sequences`, or a list of ``[T_b, *event]`` arrays (padded for you). Indexing
    with ``seqs[index]`` picks sequences, so mini-batching in :func:`elbox.fit` works as for
    tensors.

    Args:
        values: ``[B, T, *event]``.
        mask: ``[B, T]`` booleans (default: all True, unless ``lengths`` is given).
        lengths: ``[B]`` sequence lengths, instead of ``mask``.
        inputs: ``[B, T, U]`` inputs, or None.
        rewards: ``[B, T]`` real rewards, or None.
        continues: ``[B, T]`` continuation flags (0 or 1; 0 at a terminal step, which can only be a
            sequence's last), or None.

    Example:
        >>> seqs = Sequences.from_list([torch.randn(5, 2), torch.randn(3, 2)])
        >>> seqs.lengths
        tensor([5, 3])
    """

    #: ``[B, T]`` rewards, or None (a class default: batches built before the field existed have none).
    rewards: Tensor | None = None
    #: ``[B, T]`` continuation flags (0 at a terminal step), or None (a class default, as ``rewards``).
    continues: Tensor | None = None
    #: Where a value was NaN (missing), set by :func:`as_sequences` ``(missing=True)``; None when nothing is
    #: missing (a class default too, for batches assembled field by field).
    missing: Tensor | None = None

    def __init__(self, values, mask=None, *, lengths=None, inputs=None, rewards=None, continues=None):
        values = _tensor(values, "values")
        if values.dim() < 2:
            raise ValueError(f"values must be [B, T, ...] (batch and time first); received {describe(values)}")
        B, T = values.shape[:2]
        if mask is not None and lengths is not None:
            raise ValueError("pass mask or lengths, not both")
        if lengths is not None:
            lengths = torch.as_tensor(np.asarray(lengths) if not isinstance(lengths, Tensor) else lengths)
            if lengths.shape != (B,) or lengths.is_floating_point():
                raise ValueError(f"lengths must be B={B} integers; received {describe(lengths)}")
            if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
                b = int(((lengths < 1) | (lengths > T)).nonzero()[0])
                raise ValueError(
                    f"lengths must lie in [1, T={T}]; received values in [{int(lengths.min())}, {int(lengths.max())}] "
                    f"(sequence {b} has length {int(lengths[b])}" + (": a sequence needs at least one step)"
                                                                     if int(lengths[b]) < 1 else ")")
                )
            mask = torch.arange(T, device=values.device) < lengths.to(values.device).unsqueeze(-1)
        elif mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=values.device)
        else:
            mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
            if mask.shape != (B, T):
                raise ValueError(f"mask must have shape [B, T] = [{B}, {T}]; received {describe(mask)}")
            if mask.dtype != torch.bool:
                if not ((mask == 0) | (mask == 1)).all():
                    raise ValueError(f"mask must hold booleans (or 0/1); received {describe(mask)}")
                mask = mask.bool()
            mask = mask.to(values.device)
        _check_prefix(mask)
        if inputs is not None:
            inputs = _tensor(inputs, "inputs")
            if inputs.dim() != 3 or tuple(inputs.shape[:2]) != (B, T):
                raise ValueError(f"inputs must have shape [B, T, U] = [{B}, {T}, U]; received {describe(inputs)}")
        if rewards is not None:
            rewards = _tensor(rewards, "rewards")
            if tuple(rewards.shape) != (B, T):
                raise ValueError(f"rewards must have shape [B, T] = [{B}, {T}]; received {describe(rewards)}")
        if continues is not None:
            continues = _tensor(continues, "continues")
            if tuple(continues.shape) != (B, T):
                raise ValueError(f"continues must have shape [B, T] = [{B}, {T}]; received {describe(continues)}")
        self.values, self.mask, self.inputs, self.rewards = values, mask, inputs, rewards
        self.continues = continues
        self.missing: Tensor | None = None  # set by as_sequences(missing=True) where a value is NaN

    @classmethod
    def from_list(cls, sequences: Sequence, inputs: Sequence | None = None, padding: float = 0, *,
                  rewards: Sequence | None = None, continues: Sequence | None = None) -> Sequences:  # fmt: skip
        """Pads a list of ``[T_b, *event]`` arrays (and of ``[T_b, U]`` inputs, ``[T_b]`` rewards and
        continuation flags, padded with 1) to one batch."""
        if len(sequences) == 0:
            raise ValueError("sequences must hold at least one sequence; received an empty list")
        items = [s if isinstance(s, Tensor) else torch.as_tensor(np.asarray(s)) for s in sequences]
        for i, s in enumerate(items):
            if s.dim() < 1 or s.shape[0] < 1 or s.shape[1:] != items[0].shape[1:]:
                raise ValueError(
                    f"sequences[{i}] must be [T_b, *event] with T_b >= 1 and the event shape "
                    f"{list(items[0].shape[1:])} of sequences[0]; received {describe(s)}"
                )
        lengths = torch.tensor([s.shape[0] for s in items])
        values = torch.nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=padding)

        def padded(arrays, name: str, value: float = 0.0) -> Tensor | None:
            """One array per sequence, padded like the values (None stays None)."""
            if arrays is None:
                return None
            if len(arrays) != len(items):
                raise ValueError(f"{name} must hold one array per sequence ({len(items)}); received {len(arrays)}")
            tensors = [t if isinstance(t, Tensor) else torch.as_tensor(np.asarray(t)) for t in arrays]
            return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value)

        # past each end: no input, no reward, and the episode goes on (a padded step is no terminal)
        padded_inputs, padded_rewards = padded(inputs, "inputs"), padded(rewards, "rewards")
        padded_continues = padded(continues, "continues", value=1)
        return cls(values, lengths=lengths, inputs=padded_inputs, rewards=padded_rewards, continues=padded_continues)

    @property
    def shape(self) -> torch.Size:
        """The shape of ``values``, ``[B, T, *event]``."""
        return self.values.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def lengths(self) -> Tensor:
        """``[B]``, the number of steps of each sequence."""
        return self.mask.sum(-1)

    @property
    def ragged(self) -> bool:
        """Whether some sequence is shorter than T."""
        return not bool(self.mask.all())

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, index) -> Sequences:
        """The sequences named by ``index`` (an int, slice or index tensor over B)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        inputs = None if self.inputs is None else self.inputs[index]
        picked = Sequences.__new__(Sequences)
        picked.values, picked.mask, picked.inputs = self.values[index], self.mask[index], inputs
        picked.rewards = None if self.rewards is None else self.rewards[index]
        picked.continues = None if self.continues is None else self.continues[index]
        picked.missing = None if self.missing is None else self.missing[index]
        return picked

    def trimmed(self) -> Sequences:
        """These sequences without the trailing steps that none of them reaches (itself where there
        are none): a mini-batch of short sequences padded to the longest of a data set."""
        T = int(self.mask.sum(-1).max()) if len(self) else self.mask.shape[1]
        if T == self.mask.shape[1]:
            return self
        trimmed = Sequences.__new__(Sequences)
        trimmed.values, trimmed.mask = self.values[:, :T], self.mask[:, :T]
        trimmed.inputs = None if self.inputs is None else self.inputs[:, :T]
        trimmed.rewards = None if self.rewards is None else self.rewards[:, :T]
        trimmed.continues = None if self.continues is None else self.continues[:, :T]
        trimmed.missing = None if self.missing is None else self.missing[:, :T]
        return trimmed

    def to(self, *args, **kwargs) -> Sequences:
        """Converts ``values``, ``inputs``, ``rewards`` and ``continues`` (the mask keeps its dtype) as
        ``Tensor.to`` does."""
        moved = Sequences.__new__(Sequences)
        moved.values = self.values.to(*args, **kwargs)
        moved.mask = self.mask.to(moved.values.device)
        moved.inputs = None if self.inputs is None else self.inputs.to(*args, **kwargs)
        moved.rewards = None if self.rewards is None else self.rewards.to(*args, **kwargs)
        moved.continues = None if self.continues is None else self.continues.to(*args, **kwargs)
        moved.missing = None if self.missing is None else self.missing.to(moved.values.device)
        return moved

    def __repr__(self) -> str:
        lengths = self.lengths
        span = f"{int(lengths.min())}..{int(lengths.max())}" if len(self) else "-"
        inputs = "" if self.inputs is None else f", inputs {list(self.inputs.shape)}"
        rewards = "" if self.rewards is None else ", rewards"
        rewards += "" if self.continues is None else ", continues"
        return f"Sequences(values {list(self.values.shape)} {self.values.dtype}, lengths {span}{inputs}{rewards})"


def _tensor(x, name: str) -> Tensor:
    """``x`` as a tensor with data: numbers (not strings or objects), not on the meta device."""
    if not isinstance(x, Tensor):
        array = np.asarray(x)
        if array.dtype.kind not in "biufc":  # complex: refused as such where the values are read
            raise TypeError(f"{name} must be numeric; received {describe(array)}")
        x = torch.as_tensor(array)
    if x.device.type == "meta":
        raise TypeError(f"{name} is on the meta device and holds no data; received {describe(x)}")
    return x


def _check_prefix(mask: Tensor) -> None:
    """Raises unless every row of ``mask`` is True up to some length >= 1, then False."""
    if mask.shape[1] == 0:
        raise ValueError("sequences must have at least one step; received T = 0")
    lengths = mask.sum(-1)
    expected = torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(-1)
    bad = (mask != expected).any(-1) | (lengths == 0)
    if bad.any():
        b = int(bad.nonzero()[0])
        row = "".join("1" if v else "0" for v in mask[b, :40].tolist())
        raise ValueError(
            f"mask must be a prefix mask (each row True for the first T_b steps, then False, "
            f"with T_b >= 1); row {b} is {row}{'…' if mask.shape[1] > 40 else ''}. Gaps inside a "
            "sequence are not supported: split it into separate sequences."
        )


def _numeric(x, name: str = "x") -> Tensor:
    """``x`` as a tensor of real numbers (integers for symbols); anything else is a TypeError."""
    if not isinstance(x, Tensor):
        array = np.asarray(x)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be numeric data; received {describe(array)}")
        x = torch.as_tensor(array)
    if x.device.type == "meta":
        raise TypeError(f"{name} is on the meta device and holds no data; received {describe(x)}")
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued; received {describe(x)}")
    if x.dtype == torch.bool:
        raise TypeError(f"{name} must be numeric data (numbers, or integer symbols); received {describe(x)}")
    return x


def as_sequences(
    x,
    *,
    event_shape: tuple[int, ...],
    integer: bool = False,
    num_inputs: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    owner: str = "the model",
    name: str = "x",
    rewards: bool = False,
    continues: bool = False,
    missing: bool = False,
) -> Sequences:
    """``x`` (a tensor ``[B, T, *event]``, a :class:`Sequences` or a list of ``[T_b, *event]``
    arrays) as a checked Sequences: values finite where the mask is set (padded entries are
    zeroed, never read), of the right event shape, in ``dtype`` on ``device``; with ``integer``,
    symbols in ``[0, event_shape[0])`` stored as int64 ``[B, T]``; with ``num_inputs``, inputs
    ``[B, T, num_inputs]`` required (and none allowed without). What every sequence model's
    ``check_data`` does; a new sequence model calls it the same way.

    Every call checks (nothing is remembered about the tensors): one pass over the values.

    Args:
        x: The data.
        event_shape: One step's shape (``(D,)``; ``(M,)``, the number of symbols, with ``integer``).
        integer: Symbols rather than real values.
        num_inputs: The inputs' dimension (0: the data carry no inputs).
        dtype: The values' (and inputs') dtype (default torch's default dtype).
        device: Where the checked batch lives (default: where ``x`` is).
        owner: Who asks, named in error messages (e.g. ``"HMM"``).
        name: What the data are called in error messages (``fit`` passes ``"data"``).
        rewards: Rewards ``[B, T]`` required (finite where the mask is set; padding zeroed); without
            it, rewards the sequences carry are dropped from the checked batch.
        continues: Continuation flags ``[B, T]`` required: 0 or 1 where the mask is set, 0 only at a
            sequence's last step (a terminal step ends the episode); padding set to 1. Without it,
            flags the sequences carry are dropped from the checked batch.
        missing: Whether a NaN value is a missing observation (models whose filters skip gaps:
            the LGSSM, the HMM). The NaN entries are zeroed and recorded in the result's
            ``missing`` (``[B, T, *event]``, ``[B, T]`` for symbols); a sequence with no observed
            value at all is an error. Without it, a NaN is an error.

    Example:
        >>> seqs = as_sequences([torch.randn(5, 2), torch.randn(3, 2)], event_shape=(2,))
        >>> seqs.mask.sum(-1)
        tensor([5, 3])
    """
    from elbox.data.batches import Batch  # (batches.py reads Sequences: imported here, not at the top)

    if isinstance(x, Batch):  # an entry point's batch of data it has just checked passes as it is
        if x.checked:
            return x.data
        x = x.data
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if isinstance(x, Sequences):
        seqs = x
    elif isinstance(x, list | tuple) and len(x) > 0 and not isinstance(x[0], int | float):
        seqs = Sequences.from_list(x)
    else:
        seqs = Sequences(_numeric(x, name))
    _numeric(seqs.values, name)
    if len(seqs.values) == 0:
        raise ValueError(f"{name} must hold at least one sequence for {owner}; received {describe(seqs.values)}")
    device = seqs.values.device if device is None else device
    values, mask = seqs.values.to(device), seqs.mask.to(device)
    want = (None, None) if integer else (None, None, *event_shape)
    if values.dim() != len(want) or any(w is not None and w != g for w, g in zip(want, values.shape)):
        expected = "[B, T]" if integer else "[B, T, " + ", ".join(str(d) for d in event_shape) + "]"
        raise ValueError(f"{name} must have shape {expected} for {owner}; received {describe(values)}")
    valid = mask.reshape(mask.shape + (1,) * (values.dim() - 2))
    gaps = None if seqs.missing is None else seqs.missing.to(device)  # checked before: its values zeroed there
    if gaps is not None and not missing:
        raise ValueError(f"{name} has missing values ({int(gaps.sum())} entries), which {owner} does not "
                         "handle; remove or impute them (the LGSSM and the HMM skip them)")  # fmt: skip
    # One pass decides the common case: a finite sum means no NaN and no infinity anywhere (a
    # sum that overflows, or any non-finite entry, takes the full checks below).
    clean = values.is_floating_point() and bool(torch.isfinite(values.sum()))
    full = bool(mask.all())
    if missing and not clean:
        nan = torch.isnan(values) if values.is_floating_point() else torch.zeros_like(values, dtype=torch.bool)
        nan = nan & valid
        if gaps is not None:
            nan = nan | (gaps & valid)
        if bool(nan.any()):
            gaps = nan
            values = torch.where(nan, 0.0, values)  # zeroed: a kernel reads ``gaps``, never these
            seen = (valid & ~nan).reshape(len(values), -1).any(-1)  # [B]: some value observed
            if not bool(seen.all()):
                b = int((~seen).nonzero()[0])
                raise ValueError(
                    f"{name}: sequence {b} is a series of all-missing values (every one of its "
                    f"{int(mask[b].sum())} steps is NaN); {owner} needs at least one observed (finite) value in each "
                    "sequence. Drop that sequence."
                )
    if integer:
        if values.is_floating_point():
            values = as_data(torch.where(valid, values, 0), name)
            if (values != values.round()).any():
                raise ValueError(
                    f"{name} must hold integer symbols for {owner} (categorical emissions); received {describe(values)}"
                )
        values = torch.where(valid, values, 0).long()
        M = event_shape[0]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= M):
            raise ValueError(
                f"{name} must hold symbols in [0, {M}) for {owner}; received values in "
                f"[{int(values.min())}, {int(values.max())}]"
            )
    elif clean and full and values.dtype == dtype:  # already checked: finite, nothing padded
        pass
    else:
        if not values.is_floating_point():
            values = values.to(dtype)
        values = as_data(torch.where(valid, values.to(dtype), 0.0), name)
    inputs = seqs.inputs
    if num_inputs:
        if inputs is None:
            raise ValueError(f"{owner} has input_dim={num_inputs}: pass the inputs as Sequences(x, inputs=u)")
        inputs = as_data(inputs, "inputs", ndim=3, dtype=dtype, device=device)
        if inputs.shape[-1] != num_inputs:
            raise ValueError(f"inputs must have shape [B, T, {num_inputs}]; received {describe(inputs)}")
    elif inputs is not None:
        raise ValueError(f"{owner} has no inputs (input_dim=0) but the sequences carry inputs {describe(inputs)}")
    checked_rewards = None
    if rewards:
        if seqs.rewards is None:
            raise ValueError(f"{owner} has a reward head: pass the rewards as Sequences(x, inputs=u, rewards=r), "
                             "[B, T] (rewards[:, t] received on arriving at step t)")  # fmt: skip
        r = _numeric(seqs.rewards, "rewards").to(device)
        if not r.is_floating_point():
            r = r.to(dtype)
        r = torch.where(mask, r.to(dtype), 0.0)
        bad = ~torch.isfinite(r)
        if bool(bad.any()):
            b, t = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"rewards: sequence {b} has a non-finite reward ({float(r[b, t])}) at step {t}")
        checked_rewards = r
    checked_continues = None
    if continues:
        checked_continues = _check_continues(seqs.continues, mask, owner, dtype, device)
    checked = Sequences.__new__(Sequences)
    checked.values, checked.mask, checked.inputs, checked.rewards = values, mask, inputs, checked_rewards
    checked.continues = checked_continues
    checked.missing = gaps
    return checked


def _check_continues(continues, mask: Tensor, owner: str, dtype, device) -> Tensor:
    """Continuation flags ``[B, T]`` as checked ``dtype`` values: 0 or 1 where the mask is set, 0
    only at a sequence's last step; padding 1."""
    if continues is None:
        raise ValueError(f"{owner} has a continuation head: pass the continuation flags as Sequences(x, inputs=u, "
                         "rewards=r, continues=c), [B, T] (continues[:, t] = 0 where step t is terminal, else 1)")
    if not isinstance(continues, Tensor):
        continues = torch.as_tensor(np.asarray(continues))
    if continues.dtype == torch.bool:  # True: goes on
        continues = continues.to(dtype)
    c = _numeric(continues, "continues").to(device)
    c = torch.where(mask, c.to(dtype), 1.0)
    bad = (c != 0) & (c != 1)
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"continues must hold 0 (a terminal step) or 1; sequence {b} has {float(c[b, t])} at step {t}")
    last = mask.sum(-1, keepdim=True) - 1
    early = (c == 0) & (torch.arange(mask.shape[1], device=mask.device) < last)
    if bool(early.any()):
        b, t = (int(i) for i in early.nonzero()[0])
        raise ValueError(f"continues: sequence {b} is terminal (0) at step {t}, before its last step "
                         f"{int(last[b])}; a terminal step ends an episode")  # fmt: skip
    return c
