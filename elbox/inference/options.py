"""How :func:`~elbox.inference.fit` trains: its options, declared once.

Each option is one field of :class:`FitOptions`: its default, what it means, its check, and
whether a resumed run must share it (then it is recorded in every checkpoint, and a resume that
passes another value is refused). ``fit``'s keyword options, its signature, the checkpoint's
record and the run layer's mapping from a config's ``[train]`` table are all read from here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from elbox._validation import check_number, check_positive_int, check_seed
from elbox.inference.schedules import LRSchedule
from elbox.precision import check_precision

__all__ = ["FitOptions"]


def _option(default: Any, help: str, *, resume: bool) -> Any:  # noqa: A002 - the field's meaning, as docs call it
    return field(default=default, metadata={"help": help, "resume": resume})


@dataclass(frozen=True)
class FitOptions:
    """Every option of :func:`~elbox.inference.fit`, with its default; ``fit(..., lr=0.1)`` and
    ``fit(..., options=FitOptions(lr=0.1))`` are the same call. Checked when built: a bad value is
    an error naming the option. ``FitOptions.help(name)`` says what an option means."""

    epochs: int | None = _option(100, "passes over the data (None: the schedule's length, e.g. 3,280 for 'iwae')",
                                 resume=False)  # fmt: skip
    batch_size: int | None = _option(None, "points per step (default: all of them)", resume=True)
    lr: float = _option(1e-2, "the learning rate (the schedule multiplies it)", resume=True)
    optimize_model: bool = _option(True, "whether θ is fitted too, or only the guide", resume=True)
    seed: int | None = _option(None, "seeds the shuffling, binarization and particles (torch's global RNG is left as "
                                     "it was)", resume=True)  # fmt: skip
    beta: float | None = _option(None, "the ELBO's KL weight (default the model's beta, else 1)", resume=True)
    kl_warmup: int = _option(0, "epochs over which β rises linearly from 0 (Sønderby et al. 2016); 0 for none",
                             resume=True)  # fmt: skip
    clip_grad_norm: float | None = _option(None, "if given, gradients are clipped to this total norm", resume=True)
    schedule: str | LRSchedule | None = _option(None, "the learning-rate schedule: None or 'constant', 'iwae' (Burda "
                                                      "et al. 2016), 'cosine', 'exponential', or an LRSchedule",
                                                resume=True)  # fmt: skip
    adam_eps: float = _option(1e-8, "the optimizer's ε (Burda et al. use 1e-4), unless optimizer gives eps",
                              resume=True)  # fmt: skip
    optimizer: str | dict = _option("adam", "'adam' (fused), 'adamw', 'sgd' (momentum) or 'clipped_adam', or a dict "
                                            "of name and its options (elbox.inference.optimizers)",
                                    resume=True)  # fmt: skip
    binarization: str | None = _option(None, "'dynamic': each batch a fresh Bernoulli draw from the intensities "
                                              "(validation binarized once, reproducibly)", resume=True)  # fmt: skip
    patience: int | None = _option(None, "early stopping after this many epochs without a better validation (else "
                                         "training) bound; the best parameters are put back", resume=False)  # fmt: skip
    checkpoint_every: int = _option(1, "epochs between checkpoints of last", resume=False)
    progress: bool = _option(False, "show a progress bar with the bound and its parts", resume=False)
    tensorboard: bool = _option(False, "also write TensorBoard event files to run_dir/tensorboard", resume=False)
    precision: str = _option("float32", "'float32', or 'bfloat16' for the encoders' and decoders' matrix products",
                             resume=True)  # fmt: skip
    compile: bool = _option(False, "run the objective through torch.compile (eager, with a CompileWarning, where it "
                                   "cannot)", resume=False)  # fmt: skip

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checked values replace the given ones once, here
        if self.epochs is not None:
            set_(self, "epochs", check_positive_int(self.epochs, "epochs"))
        if self.batch_size is not None:
            set_(self, "batch_size", check_positive_int(self.batch_size, "batch_size"))
        set_(self, "lr", _positive_finite(self.lr, "lr"))
        set_(self, "adam_eps", _positive_finite(self.adam_eps, "adam_eps"))
        for name in ("optimize_model", "progress", "tensorboard", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; received {getattr(self, name)!r}")
        set_(self, "seed", check_seed(self.seed))
        set_(self, "kl_warmup", check_positive_int(self.kl_warmup, "kl_warmup", minimum=0))
        if self.clip_grad_norm is not None:
            set_(self, "clip_grad_norm", _positive_finite(self.clip_grad_norm, "clip_grad_norm"))
        if self.binarization not in (None, "dynamic"):
            raise ValueError(f"binarization must be None or 'dynamic'; received {self.binarization!r}")
        if self.patience is not None:
            set_(self, "patience", check_positive_int(self.patience, "patience"))
        set_(self, "checkpoint_every", check_positive_int(self.checkpoint_every, "checkpoint_every"))
        set_(self, "precision", check_precision(self.precision))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def resume_names(cls) -> tuple[str, ...]:
        """The options a resumed run must share with the run it continues."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["resume"])

    @classmethod
    def help(cls, name: str) -> str:
        """What the option ``name`` means."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}[name]

    def replace(self, **changes) -> FitOptions:
        """These options with ``changes`` (checked)."""
        return dataclasses.replace(self, **changes)


def _positive_finite(value, name: str) -> float:
    value = check_number(value, name, only_type=True)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite; received {value}")
    return value
