"""The Nile's annual flow at Aswan, 1871–1970: the textbook series of Durbin & Koopman, embedded."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NILE_SOURCE", "nile"]

#: Where the values come from.
NILE_SOURCE = (
    "Annual flow of the river Nile at Aswan, 1871-1970, in 10^8 m^3 (Cobb 1978; Durbin & Koopman, Time Series "
    "Analysis by State Space Methods, 2nd ed. 2012, ch. 2); public data, as shipped by statsmodels 0.15.0 "
    "(statsmodels.datasets.nile), the 100 values copied here so that nothing downloads"
)

_VOLUME = (
    1120, 1160, 963, 1210, 1160, 1160, 813, 1230, 1370, 1140,
    995, 935, 1110, 994, 1020, 960, 1180, 799, 958, 1140,
    1100, 1210, 1150, 1250, 1260, 1220, 1030, 1100, 774, 840,
    874, 694, 940, 833, 701, 916, 692, 1020, 1050, 969,
    831, 726, 456, 824, 702, 1120, 1100, 832, 764, 821,
    768, 845, 864, 862, 698, 845, 744, 796, 1040, 759,
    781, 865, 845, 944, 984, 897, 822, 1010, 771, 676,
    649, 846, 812, 742, 801, 1040, 860, 874, 848, 890,
    744, 749, 838, 1050, 918, 986, 797, 923, 975, 815,
    1020, 906, 901, 1170, 912, 746, 919, 718, 714, 740,
)


def nile(*, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The Nile series: the flow [100] and the years [100] (1871–1970).

    Example:
        >>> flow, years = nile()
        >>> int(years[0]), float(flow[0])
        (1871, 1120.0)
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype; received {dtype!r}")
    return torch.tensor(_VOLUME, dtype=dtype), torch.arange(1871, 1971)
