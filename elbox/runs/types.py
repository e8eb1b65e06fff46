"""The model types a config can name (``[model] type = "…"``): their keys, how each is built
from a config and its data, and the guide VI trains with. New types register themselves with
:func:`register_model_type`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from elbox.distributions.flow import FLOW_TYPES
from elbox.models.flow import FlowDensity
from elbox.runs._schema import (
    BOOL,
    MAX_SIZE,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    SIZE,
    SIZES,
    Check,
    ConfigError,
    Key,
    choice,
    is_positive,
    is_size,
)

__all__ = ["MODEL_TYPES", "DataInfo", "ModelType", "register_model_type"]


@dataclass(frozen=True)
class DataInfo:
    """What a model's shape depends on, recorded in the config of record when a run starts.

    Attributes:
        dim: The size of one point (one step, for sequences); 0 for categorical symbols.
        symbols: For symbol sequences, the number of symbols M.
        points: Training points (or sequences): the size of a local guide.
        steps: For sequences, the padded length T.
        inputs: For state-space models with controls, U.
    """

    dim: int
    symbols: int = 0
    points: int = 0
    steps: int = 0
    inputs: int = 0


@dataclass(frozen=True)
class ModelType:
    """A model type of the configs.

    Attributes:
        name: ``[model] type``.
        keys: Its ``[model]`` keys (besides ``type``).
        build: ``build(model_config, data_info) -> model`` (parameters at their defaults; the
            run seeds torch first).
        guide: ``guide(model, model_config, data_info) -> guide`` for VI with a bound (None: the
            model has no guide to offer; only ``max_likelihood`` then).
        method: The default ``[train] method``: ``"em"`` or ``"vi"``.
        init: The default EM/VI initialization (``model.initialize`` method), or None.
        sequences: Whether the model takes sequences (``[N, T, D]`` data).
        dtype: The dtype the CLI fits it in (None: torch's default, float32 unless changed).
        description: One line for the docs and errors.
        sections: Other config sections the type reads (``("guide", "prior")`` for the VAE):
            ``build`` finds each as a table in its model config under the section's name.
        resolve: ``resolve(config)``: sets the type's ``"auto"`` values in the parsed config (the
            VAE's binarization and flow context; the flow's dequantization step), before the
            generic ones (``auto`` binarization is ``"none"``, the context 0).
        check: ``check(config, source)``: refuses combinations of keys the type cannot run, with a
            :class:`ConfigError` that starts with ``source`` and names the keys.
        networks: Whether the type's model has encoder/decoder networks that ``precision =
            "bfloat16"`` rounds.
        em: Whether ``[train] method = "em"`` applies (the model has a closed-form M-step).
        figures: ``figures(directory, config, model) -> list[Path]``: the type's own figures,
            drawn into the run directory after training (every type gets its training curves).
    """

    name: str
    keys: dict[str, Key]
    build: Callable
    guide: Callable | None
    method: str
    init: str | None
    sequences: bool
    dtype: torch.dtype | None
    description: str
    sections: tuple[str, ...] = ()
    resolve: Callable[[dict], None] | None = None
    check: Callable[[dict, str], None] | None = None
    networks: bool = False
    em: bool = True
    figures: Callable | None = None


MODEL_TYPES: dict[str, ModelType] = {}


def register_model_type(model_type: ModelType) -> ModelType:
    """Adds a model type to the configs (``[model] type = model_type.name``)."""
    if not isinstance(model_type, ModelType):
        raise TypeError(f"model_type must be an elbox.runs.ModelType; received {type(model_type).__name__}")
    if model_type.method not in ("em", "vi"):
        raise ValueError(f"a model type's method must be 'em' or 'vi'; received {model_type.method!r}")
    MODEL_TYPES[model_type.name] = model_type
    return model_type


def _resolve_vae(config: dict) -> None:
    model, data = config["model"], config["data"]
    if data["binarization"] == "auto":
        data["binarization"] = "dynamic" if model["decoder"] == "bernoulli" else "none"
    if config["guide"]["context_dim"] == "auto" and model["type"] == "vae":
        config["guide"]["context_dim"] = 2 * model["latent_dim"]


def _check_vae(config: dict, source: str) -> None:
    model, train = config["model"], config["train"]
    if model["decoder"] == "bernoulli" and config["data"]["binarization"] == "none":
        raise ConfigError(
            f"{source}: [model] decoder = 'bernoulli' needs binary data, but [data] binarization = 'none'; "
            "binarize, or use decoder = 'continuous_bernoulli' (intensities) or 'gaussian'"
        )
    if model["decoder"] != "gaussian" and model["observation_variance"] != 1.0:
        raise ConfigError(f"{source}: [model] observation_variance applies to decoder = 'gaussian' only")
    if train["objective"] in ("iwae", "renyi") and model.get("deterministic_encoder"):
        raise ConfigError(f"{source}: [train] objective = {train['objective']!r} needs a stochastic encoder")
    if config["guide"]["type"] == "flow" and model.get("deterministic_encoder"):
        raise ConfigError(f"{source}: [guide] type = 'flow' is a distribution over z; [model] deterministic_encoder "
                          "= true asks for a point")  # fmt: skip


def _resolve_flow(config: dict) -> None:
    if config["model"]["dequantize"] == "auto":
        config["model"]["dequantize"] = {"digits": 1 / 16, "mnist": 1 / 255}.get(config["data"]["name"], "none")


def _check_flow(config: dict, source: str) -> None:
    model, train = config["model"], config["train"]
    if config["data"]["binarization"] != "none":
        raise ConfigError(f"{source}: [model] type = 'flow' models intensities: set [data] binarization = 'none'")
    if model["dequantize"] == "none" and train["objective"] != "max_likelihood":
        raise ConfigError(f"{source}: a flow over continuous data (dequantize = 'none') has exact log p(x) and no "
                          "latent: use [train] objective = 'max_likelihood'")  # fmt: skip
    if model["dequantize"] != "none" and train["objective"] not in ("elbo", "iwae"):
        raise ConfigError(f"{source}: a dequantized flow is trained by the dequantized likelihood, "
                          "E_u log p(x + u): use [train] objective = 'elbo' (or 'iwae', a tighter bound on the "
                          "cells' probability)")  # fmt: skip


@torch.no_grad()
def _vae_figures(directory, config: dict, model) -> list:
    """Reconstructions beside inputs, prior samples and the latent space, on the test split."""
    from elbox import plots
    from elbox.runs.data import load_data

    x, labels = load_data(config, "test")
    x = model.check_data(x[:2000])
    labels = labels[:2000] if labels is not None else torch.zeros(len(x), dtype=torch.long)
    was_training = model.training
    model.eval()
    paths = {name: directory / f"{name}.png" for name in ("reconstructions", "samples", "latent_space")}
    plots.plot_reconstructions(x[:16], model.reconstruct(x[:16]), paths["reconstructions"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["train"]["seed"])
        means = model.likelihood(model.prior().sample((32,))).mean
    plots.plot_samples(means, paths["samples"])
    plots.plot_latent_space(model.latent_mean(x).flatten(1), labels, paths["latent_space"])  # one-hot z: [n, N K]
    model.train(was_training)
    return list(paths.values())


def _vae(m: dict, info: DataInfo):
    from elbox.models import VAE

    return VAE(info.dim, m["latent_dim"], hidden=tuple(m["hidden"]), activation=m["activation"],
               decoder=m["decoder"], observation_variance=m["observation_variance"], beta=m["beta"],
               deterministic_encoder=m["deterministic_encoder"], guide=m.get("guide", "gaussian"),
               prior=m.get("prior", "normal"), encoder=m["encoder"], depth=m["depth"])  # fmt: skip


def _discrete_vae(m: dict, info: DataInfo):
    from elbox.models import DiscreteVAE

    return DiscreteVAE(info.dim, m["num_variables"], m["num_categories"], latent=m["latent"],
                       hidden=tuple(m["hidden"]), activation=m["activation"], decoder=m["decoder"],
                       observation_variance=m["observation_variance"])  # fmt: skip


def _flow(m: dict, info: DataInfo):
    from elbox.models import FlowDensity

    step = None if m["dequantize"] == "none" else float(m["dequantize"])
    return FlowDensity(info.dim, m["flow"], transforms=m["transforms"], hidden=tuple(m["hidden"]), dequantize=step)


def _dequantization(model, m: dict, info: DataInfo):
    from elbox.models import UniformDequantization

    return UniformDequantization(model) if model.dequantize is not None else None


def _gmm(m: dict, info: DataInfo):
    from elbox.models import GaussianMixture

    return GaussianMixture(m["components"], info.dim, covariance_type=m["covariance"], reg_covar=m["reg_covar"])


def _fa(isotropic: bool):
    def build(m: dict, info: DataInfo):
        from elbox.models import FactorAnalysis

        return FactorAnalysis(info.dim, m["latent_dim"], isotropic=isotropic)

    return build


def _hmm(m: dict, info: DataInfo):
    from elbox.models import HMM

    if info.symbols:
        return HMM(m["states"], "categorical", num_symbols=info.symbols, fixed=m["fixed"])
    return HMM(m["states"], "gaussian", dim=info.dim, covariance_type=m["covariance"], reg_covar=m["reg_covar"],
               fixed=m["fixed"])  # fmt: skip


#: [model] structure of the lgssm type: the structural time-series constructors of elbox.models.structural.
STRUCTURES = ("local_level", "local_linear_trend", "seasonal", "autoregressive")


def _structures(m: dict) -> list[str]:
    """[model] structure as a list of components (empty: the general LGSSM)."""
    value = m["structure"]
    return [] if value == "none" else [value] if isinstance(value, str) else list(value)


def _is_structure(v) -> bool:
    names = [v] if isinstance(v, str) else v
    if v == "none":
        return True
    return isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) and n in STRUCTURES for n in names) \
        and len(set(names)) == len(names)  # fmt: skip


def _structure_size(name: str, m: dict) -> int:
    if name == "seasonal":
        return m["period"] - 1 if m["seasonal"] == "dummy" else 2 * (m["harmonics"] or m["period"] // 2)
    return {"local_level": 1, "local_linear_trend": 2, "autoregressive": m["order"]}[name]


def _structure_model(name: str, m: dict):
    from elbox.models import structural

    if name == "seasonal":
        harmonics = (m["harmonics"] or None) if m["seasonal"] == "trigonometric" else None
        return structural.seasonal(m["period"], kind=m["seasonal"], harmonics=harmonics)
    if name == "autoregressive":
        return structural.autoregressive([0.0] * m["order"])
    return getattr(structural, name)()


def _lgssm(m: dict, info: DataInfo):
    from elbox.models import LinearGaussianSSM
    from elbox.models.structural import combine

    names = _structures(m)
    if not names:
        return LinearGaussianSSM(m["state_dim"], info.dim, info.inputs, reg_covar=m["reg_covar"], fixed=m["fixed"])
    if info.dim != 1 or info.inputs:
        raise ConfigError(f"[model] structure = {m['structure']!r} models one series without inputs (one column); "
                          f"the data have {info.dim} columns and {info.inputs} inputs")  # fmt: skip
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the type's dtype: a float32 build would round 1e6 and P_∞ first
    try:
        components = [_structure_model(n, m) for n in names]
        model = components[0] if len(components) == 1 else combine(*components)
    finally:
        torch.set_default_dtype(default)
    model.reg_covar = float(m["reg_covar"])
    return model.fix(*m["fixed"]) if m["fixed"] else model


def _resolve_lgssm(config: dict) -> None:
    m = config["model"]
    if m["state_dim"] == "auto":
        names = _structures(m)
        m["state_dim"] = sum(_structure_size(n, m) for n in names) if names else 2


def _check_fixed(config: dict, source: str, fixable) -> None:
    wrong = [name for name in config["model"]["fixed"] if name not in fixable]
    if wrong:
        raise ConfigError(f"{source}: [model] fixed names {wrong[0]!r}, which a {config['model']['type']!r} model "
                          f"does not have; it can fix {', '.join(map(repr, fixable))}")  # fmt: skip


def _check_hmm(config: dict, source: str) -> None:
    from elbox.models import HMM

    _check_fixed(config, source, HMM._FIXABLE)


def _check_lgssm(config: dict, source: str) -> None:
    from elbox.models import LinearGaussianSSM

    _check_fixed(config, source, LinearGaussianSSM._FIXABLE)
    m, names = config["model"], _structures(config["model"])
    where = f"{source}: [model]"
    if "seasonal" in names:
        if m["period"] < 2:
            raise ConfigError(f"{where} structure 'seasonal' needs period, the steps per season (at least 2)")
        if m["harmonics"] and (m["seasonal"] != "trigonometric" or m["harmonics"] > m["period"] // 2):
            raise ConfigError(f"{where} harmonics applies to seasonal = 'trigonometric', from 1 to period // 2 = "
                              f"{m['period'] // 2}; received harmonics = {m['harmonics']} with seasonal = "
                              f"{m['seasonal']!r}")  # fmt: skip
    else:
        for key, default in (("period", 0), ("harmonics", 0), ("seasonal", "dummy")):
            if m[key] != default:
                raise ConfigError(f"{where} {key} applies to structure 'seasonal' only; received structure = "
                                  f"{m['structure']!r}")  # fmt: skip
    if "autoregressive" in names and m["order"] < 1:
        raise ConfigError(f"{where} structure 'autoregressive' needs order, p of the AR(p) (at least 1)")
    if "autoregressive" not in names and m["order"]:
        raise ConfigError(f"{where} order applies to structure 'autoregressive' only; received structure = "
                          f"{m['structure']!r}")  # fmt: skip
    if names and m["state_dim"] != sum(_structure_size(n, m) for n in names):
        raise ConfigError(f"{where} state_dim = {m['state_dim']} does not match structure = {m['structure']!r}, "
                          f"which has {sum(_structure_size(n, m) for n in names)} states: leave state_dim out")
    singular = "autoregressive" in names or ("seasonal" in names and m["seasonal"] == "dummy")
    train = config["train"]
    if singular and train["method"] == "vi" and train["objective"] != "max_likelihood":
        raise ConfigError(f"{where} structure = {m['structure']!r} has a singular state noise (it enters some states "
                          f"only), so its trajectories have no density for [train] objective = "
                          f"{train['objective']!r}: use method = 'em', or objective = 'max_likelihood'")  # fmt: skip


def _local_categorical(model, m: dict, info: DataInfo):
    from elbox.guides import Categorical

    return Categorical(model.num_components, num_points=info.points)


def _local_normal(model, m: dict, info: DataInfo):
    from elbox.guides import MeanFieldNormal

    return MeanFieldNormal(model.latent_dim, num_points=info.points)


def _local_paths(model, m: dict, info: DataInfo):
    from elbox.guides import Categorical

    return Categorical(model.num_states, num_points=info.points, event_shape=(info.steps,))


def _local_trajectories(model, m: dict, info: DataInfo):
    from elbox.guides import MeanFieldNormal

    return MeanFieldNormal((info.steps, m["state_dim"]), num_points=info.points)


def _fixed_key(model: str) -> Key:
    return Key([], Check(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                         "a list of parameter names"),
               f"parameters held at their initial values by EM and gradient fitting (names as {model}'s fixed=)")


def _hidden(default: list[int]) -> Key:
    return Key(default, SIZES, "the encoder's hidden widths (the decoder mirrors them)")  # fmt: skip


def _activation(default: str) -> Key:
    return Key(default, choice("tanh", "relu", "elu", "gelu", "softplus"), "the hidden layers' activation")  # fmt: skip


_DECODER = Key("bernoulli", choice("bernoulli", "gaussian", "continuous_bernoulli"), "p(x | z)")  # fmt: skip
_OBSERVATION_VARIANCE = Key(1.0, lambda v: is_positive(v) or v == "learned", "a positive number or 'learned'",
                            "σ² of the Gaussian decoder")  # fmt: skip
_REG = Key(1e-6, NON_NEGATIVE,
           "added to the diagonal of estimated covariances (raise it if a component collapses)")  # fmt: skip
_COVARIANCE = Key("full", choice("full", "diag"), "the components' covariance")

register_model_type(ModelType(
    name="vae",
    keys={
        "latent_dim": Key(8, SIZE, "the size of z"),
        "hidden": _hidden([200, 200]),
        "activation": _activation("tanh"),
        "decoder": _DECODER,
        "observation_variance": _OBSERVATION_VARIANCE,
        "beta": Key(1.0, NON_NEGATIVE, "the KL weight of the objective"),
        "deterministic_encoder": Key(False, BOOL, "a plain autoencoder"),
        "encoder": Key("mlp", choice("mlp", "conv"),
                       "'conv': Dreamer's convolutions for 64 × 64 images [N, C, 64, 64] (or [N, 64, 64]), then an "
                       "MLP of widths hidden; the decoder mirrors them"),
        "depth": Key(32, SIZE, "the convolutions' depth with encoder = 'conv' (Dreamer: 32)"),
    },
    build=_vae, guide=lambda model, m, info: model.guide, method="vi", init=None, sequences=False,
    dtype=None, description="a variational autoencoder (an amortized Gaussian or flow q; a normal or flow prior)",
    sections=("guide", "prior"), resolve=_resolve_vae, check=_check_vae, networks=True, em=False,
    figures=_vae_figures,
))  # fmt: skip
register_model_type(ModelType(
    name="discrete_vae",
    keys={
        "num_variables": Key(20, SIZE, "N, the discrete latents"),
        "num_categories": Key(10, lambda v: is_size(v) and v >= 2, f"an integer from 2 to {MAX_SIZE:,}",
                              "K, each categorical latent's classes"),
        "latent": Key("categorical", choice("categorical", "bernoulli"),
                      "N categorical variables of K classes (one-hot), or N binary ones"),
        "hidden": _hidden([512, 256]),
        "activation": _activation("relu"),
        "decoder": _DECODER,
        "observation_variance": _OBSERVATION_VARIANCE,
    },
    build=_discrete_vae, guide=lambda model, m, info: model.guide, method="vi", init=None, sequences=False,
    dtype=None, description="a VAE with discrete latents (categorical, uniform prior; or Bernoulli): train it with "
                            "gumbel_softmax, score_function, vimco, enumerate or rws",
    resolve=_resolve_vae, check=_check_vae, networks=True, em=False, figures=_vae_figures,
))  # fmt: skip
register_model_type(ModelType(
    name="flow",
    keys={
        "flow": Key(FlowDensity.DEFAULTS["flow"], choice(*FLOW_TYPES),
                    "zuko's masked autoregressive, neural spline or RealNVP coupling flow"),
        "transforms": Key(FlowDensity.DEFAULTS["transforms"], SIZE, "stacked transformations"),
        "hidden": Key(list(FlowDensity.DEFAULTS["hidden"]), SIZES, "each transformation's hidden widths"),
        "dequantize": Key("auto", lambda v: v in ("auto", "none") or is_positive(v),
                          "'auto', 'none' or a positive grid step",
                          "discrete data's grid step for uniform dequantization (auto: 1/16 for the digits, 1/255 "
                          "for MNIST, none otherwise; none: continuous data, exact log p(x))"),
    },
    build=_flow, guide=_dequantization, method="vi", init=None, sequences=False, dtype=None,
    description="a normalizing-flow density (exact log p(x); dequantized for discrete data)",
    resolve=_resolve_flow, check=_check_flow,
))  # fmt: skip
register_model_type(ModelType(
    name="gmm",
    keys={"components": Key(3, SIZE, "mixture components K"),
          "covariance": _COVARIANCE, "reg_covar": _REG},
    build=_gmm, guide=_local_categorical, method="em", init="kmeans++", sequences=False, dtype=torch.float64,
    description="a Gaussian mixture (exact evidence)",
))  # fmt: skip
for _name, _isotropic, _what in (("fa", False, "factor analysis"), ("ppca", True, "probabilistic PCA")):
    register_model_type(ModelType(
        name=_name,
        keys={"latent_dim": Key(2, SIZE, "the number of factors K")},
        build=_fa(_isotropic), guide=_local_normal, method="em", init="pca", sequences=False, dtype=torch.float64,
        description=f"{_what} (exact evidence)",
    ))  # fmt: skip
register_model_type(ModelType(
    name="hmm",
    keys={"states": Key(3, SIZE, "hidden states K"),
          "covariance": Key("diag", choice("full", "diag"), "Gaussian emissions' covariance"),
          "reg_covar": _REG, "fixed": _fixed_key("HMM")},
    build=_hmm, guide=_local_paths, method="em", init="kmeans++", sequences=True, dtype=torch.float64,
    check=_check_hmm,
    description="a hidden Markov model, Gaussian emissions or (integer data) categorical (exact evidence)",
))  # fmt: skip
register_model_type(ModelType(
    name="lgssm",
    keys={"state_dim": Key("auto", lambda v: v == "auto" or is_size(v), f"'auto' or a positive integer up to "
                           f"{MAX_SIZE:,}", "the size of the latent state (auto: 2, or the structure's)"),
          "reg_covar": Key(0.0, NON_NEGATIVE, "added to the diagonal of the M-step's covariances"),
          "structure": Key("none", Check(_is_structure, "'none', one of " + ", ".join(map(repr, STRUCTURES))
                                         + ", or a list of them (their sum, one observation noise)"),
                           "a structural time-series model of elbox.models.structural, its structure held fixed"),
          "period": Key(0, NON_NEGATIVE_INT, "seasonal: the steps per season"),
          "seasonal": Key("dummy", choice("dummy", "trigonometric"), "seasonal: the kind"),
          "harmonics": Key(0, NON_NEGATIVE_INT, "trigonometric seasonal: harmonics (0: period // 2)"),
          "order": Key(0, NON_NEGATIVE_INT, "autoregressive: p of the AR(p)"),
          "fixed": _fixed_key("LinearGaussianSSM")},
    build=_lgssm, guide=_local_trajectories, method="em", init="random", sequences=True, dtype=torch.float64,
    resolve=_resolve_lgssm, check=_check_lgssm,
    description="a linear-Gaussian state-space model, the Kalman filter's (exact evidence)",
))  # fmt: skip


def _dmm(m: dict, info: DataInfo):
    from elbox.models import DeepMarkovModel

    emission = "categorical" if info.symbols else m["emission"]
    return DeepMarkovModel(info.symbols or info.dim, m["latent_dim"], input_dim=info.inputs,
                           transition=m["transition"], transition_dim=m["transition_dim"], emission=emission,
                           emission_hidden=tuple(m["emission_hidden"]),
                           observation_variance=m["observation_variance"] if emission == "gaussian" else 1.0,
                           )  # fmt: skip


def _dmm_guide(model, m: dict, info: DataInfo):
    return model.guide(m["guide"], rnn_dim=m["rnn_dim"], iafs=m["iafs"], iaf_dim=m["iaf_dim"])


@torch.no_grad()
def _dmm_figures(directory, config: dict, model, sequences: int = 16, particles: int = 64) -> list:
    """The gap between log p̂(x_t | x_<t) and ELBO_t over time, on the first ``sequences`` test
    sequences (``particles`` particles, 2 runs)."""
    from elbox import plots
    from elbox.evidence.smc import sequence_report
    from elbox.runs.data import load_data
    from elbox.runs.load import load_run

    guide = load_run(directory).guide if config["train"]["method"] == "vi" else None
    if guide is None:
        return []
    x, _ = load_data(config, "test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["evaluate"]["seed"])
        report = sequence_report(model, guide, x[:sequences], num_samples=particles, num_runs=2, elbo_samples=2)
    path = directory / "gap_over_time.png"
    plots.plot_gap_over_time(report, path)
    return [path]


register_model_type(ModelType(
    name="dmm",
    keys={
        "latent_dim": Key(100, SIZE, "the size of z_t"),
        "transition": Key("gated", choice("gated", "linear"),
                          "p(z_t | z_{t-1}): Pyro's gated MLP, or linear-Gaussian (then an LGSSM)"),
        "transition_dim": Key(200, SIZE, "the gated transition's width"),
        "emission": Key("bernoulli", choice("bernoulli", "gaussian"), "p(x_t | z_t) (integer symbols: categorical)"),
        "emission_hidden": Key([100, 100], lambda v: isinstance(v, list) and all(is_size(i) for i in v),
                               f"a list of positive integers up to {MAX_SIZE:,} (empty: linear)",
                               "the emitter's hidden widths"),
        "observation_variance": _OBSERVATION_VARIANCE,
        "guide": Key("st-r", choice("st-r", "st-lr", "mf-lr", "st-l"),
                     "the structured guide: RNN over x_{t:T} (st-r), both ways (st-lr), mean field (mf-lr), "
                     "filter (st-l)"),
        "rnn_dim": Key(600, SIZE, "the guide's RNN width"),
        "iafs": Key(0, lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16,
                    "an integer from 0 to 16", "inverse autoregressive flows on each step of q"),
        "iaf_dim": Key(100, SIZE, "the IAFs' hidden width"),
    },
    build=_dmm, guide=_dmm_guide, method="vi", init=None, sequences=True, dtype=None,
    description="a deep Markov model (Krishnan et al. 2017) with a structured guide; elbo, iwae or fivo",
    em=False, figures=_dmm_figures,
))  # fmt: skip


def _world(m: dict, info: DataInfo):
    from elbox.models import WorldModel

    if info.symbols:
        raise ConfigError("[model] type = 'world' takes real-valued observations [N, T, D]; the data are symbols")
    return WorldModel(info.dim, info.inputs, latent=m["latent"], latent_dim=m["latent_dim"], classes=m["classes"],
                      deter_dim=m["deter_dim"], hidden=m["hidden"], reward=m["reward"], transition=m["transition"],
                      use_actions=m["use_actions"], encoder=m["encoder"], depth=m["depth"],
                      observation_variance=m["observation_variance"], min_std=m["min_std"],
                      unimix=m["unimix"], continuation=m["continuation"])  # fmt: skip


def _world_guide(model, m: dict, info: DataInfo):
    return model.guide()


def _check_world(config: dict, source: str) -> None:
    model = config["model"]
    if model["transition"] == "linear" and model["latent"] != "gaussian":
        raise ConfigError(f"{source}: [model] transition = 'linear' is linear-Gaussian: it needs latent = 'gaussian'")
    if config["train"]["init"] not in ("none", "mean"):
        raise ConfigError(f"{source}: [train] init = {config['train']['init']!r}: a 'world' model takes 'mean' (its "
                          "decoder starts at the training data's mean observation) or 'none'")  # fmt: skip
    if config["train"]["init"] == "mean" and model["transition"] == "linear":
        raise ConfigError(f"{source}: [train] init = 'mean' sets the decoder's bias; the linear model's emission has "
                          "none (transition = 'linear')")  # fmt: skip
    if model["encoder"] == "conv" and model["transition"] == "linear":
        raise ConfigError(f"{source}: [model] encoder = 'conv' needs transition = 'rssm' (the linear model's emission "
                          "is linear)")  # fmt: skip


@torch.no_grad()
def _world_figures(directory, config: dict, model) -> list:
    """The gap over time (:func:`_dmm_figures`); for frames (``encoder = "conv"``) also
    ``imagined_frames.png``: a test episode's true frames above the frames imagined from its first
    10 steps under its logged actions, up to 20 steps ahead, the posterior's and the prior's means
    (:func:`elbox.plots.plot_frames`)."""
    if model.encoder_kind != "conv":
        return _dmm_figures(directory, config, model)
    from elbox import plots
    from elbox.models.world import _prefix
    from elbox.runs.data import load_data

    # every particle's frame is decoded: the gap over 4 test episodes of 16 particles (64 and 16 for vectors)
    paths = _dmm_figures(directory, config, model, sequences=4, particles=16)
    x, _ = load_data(config, "test")
    x = model.check_data(x[:1])
    context = min(10, int(x.lengths[0]) // 2)
    T = min(int(x.lengths[0]), context + 20)  # at most 20 steps ahead
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["evaluate"]["seed"])
        state = model.filter(_prefix(x, context), sample=False)
        actions = x.inputs[:, context:T] if x.inputs is not None else x.values.new_zeros(1, T - context, 0)
        imagined = model.imagine(state, actions, sample=False).observations  # [1, K, C, 64, 64]
    path = directory / "imagined_frames.png"
    plots.plot_frames({"true": x.values[0, context:T], "imagined": imagined[0]}, path, first_step=context + 1,
                      title=f"a test episode: frames imagined from {context} observed steps, under its actions")
    return paths + [path]


register_model_type(ModelType(
    name="world",
    keys={
        "latent": Key("gaussian", choice("gaussian", "categorical"),
                      "z_t: Gaussian (PlaNet) or categorical one-hot variables (DreamerV2/3)"),
        "latent_dim": Key(30, SIZE, "Gaussian latents: their number; categorical: the number of variables"),
        "classes": Key(32, lambda v: is_size(v) and v >= 2, "an integer >= 2", "categorical latents: classes each"),
        "deter_dim": Key(200, SIZE, "the GRU's deterministic state h_t"),
        "hidden": Key(200, SIZE, "the MLPs' width (encoder, heads, posterior)"),
        "reward": Key(True, BOOL, "a reward head p(r_t | h_t, z_t) (the data must carry rewards)"),
        "continuation": Key(False, BOOL, "a continuation head p(c_t | h_t, z_t), Bernoulli, c_t = 0 at a terminal "
                                         "step (the data must carry continues, as elbox collect writes)"),
        "transition": Key("rssm", choice("rssm", "linear"),
                          "the RSSM, or linear-Gaussian (then an LGSSM with the actions as inputs)"),
        "use_actions": Key(True, BOOL, "false: the model ignores the actions (a baseline on the same data)"),
        "encoder": Key("mlp", choice("mlp", "conv"),
                       "'mlp': vector observations [N, T, D]; 'conv': Dreamer's convolutions for 64 × 64 frames "
                       "[N, T, C, 64, 64] (uint8 0–255 as elbox collect --pixels writes them, or floats in [0, 1])"),
        "depth": Key(32, SIZE, "the convolutions' depth with encoder = 'conv' (Dreamer: 32)"),
        "observation_variance": _OBSERVATION_VARIANCE,
        "min_std": Key(0.1, NON_NEGATIVE, "Gaussian latents: the floor on the std (PlaNet: 0.1)"),
        "unimix": Key(0.01, lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1,
                      "a number in [0, 1]", "categorical latents: the uniform mix (DreamerV3: 0.01)"),
    },
    build=_world, guide=_world_guide, method="vi", init="none", sequences=True, dtype=None,
    description="a world model (PlaNet's/Dreamer's RSSM) of observations given actions; world_elbo, iwae or fivo",
    check=_check_world, em=False, figures=_world_figures,
))  # fmt: skip
