"""The world model's continuation flag c_t (Dreamer's continue predictor, 0 at a terminal step):
its Bernoulli term in the true ELBO against the linear-Gaussian oracle (float64, the same
particles), the data's ``continues`` through Sequences, files, runs and ``elbox collect``,
imagination, and CEM's weighting of rewards by the probability that the episode is running."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import elbox
from elbox import Sequences, WorldModel
from elbox.models.world import world_elbo_steps
from tests.test_world import LENGTHS
from tests.test_world import _episodes as world_episodes


def _linear_pair(seed=0) -> tuple[WorldModel, WorldModel]:
    """A linear world model with a continuation head, random parameters and a perturbed posterior
    (float64), and the same model without the head."""
    torch.manual_seed(seed)
    Z, obs, A = 2, 2, 1
    head = WorldModel(obs, A, transition="linear", latent_dim=Z, reward=False, observation_variance=0.5,
                      continuation=True).double()  # fmt: skip
    with torch.no_grad():
        M = torch.randn(Z, Z, dtype=torch.float64)
        head.transition_matrix.weight.copy_(0.8 * M / torch.linalg.matrix_norm(M, 2))
        head.raw_scale.copy_(torch.randn(Z) * 0.3)
        head.observation.weight.copy_(torch.randn(obs, Z))
        head.control.weight.copy_(torch.randn(Z, A))
        head.z_0.copy_(torch.randn(Z))
        head.continuation_head.weight.copy_(0.5 * torch.randn(1, Z))
        head.continuation_head.bias.fill_(3.0)
        guide = head.guide()
        guide.head.weight.copy_(torch.cat([torch.eye(Z), torch.zeros(Z, obs)], 1) + 0.2 * torch.randn(Z, Z + obs))
        guide.head.bias.copy_(0.2 * torch.randn(Z))
        guide.raw_scale.copy_(head.raw_scale + 0.2 * torch.randn(Z))
    plain = WorldModel(obs, A, transition="linear", latent_dim=Z, reward=False, observation_variance=0.5).double()
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("continuation_head")}
    plain.load_state_dict(state)
    return head, plain


def _flags(lengths: torch.Tensor, terminal: list[bool]) -> torch.Tensor:
    """[B, T] continuation flags: 0 at the last step of the sequences marked terminal, else 1."""
    c = torch.ones(len(lengths), int(lengths.max()), dtype=torch.float64)
    for b, ends in enumerate(terminal):
        if ends:
            c[b, int(lengths[b]) - 1] = 0.0
    return c


def _episodes(model, lengths=LENGTHS, seed=1) -> Sequences:
    """test_world's episodes (the same draws), with continuation flags in place of rewards."""
    base = world_episodes(model, lengths, seed)
    return Sequences(base.values, lengths=lengths, inputs=base.inputs,
                     continues=_flags(lengths, [True, False, True, False, True]))  # fmt: skip


def _bernoulli(model: WorldModel, x: Sequences, path: torch.Tensor) -> torch.Tensor:
    """Σ_t log Bernoulli(c_t; σ(w·z_t + b)) over each sequence's steps, ``[S, B]``, by torch.distributions."""
    head = model.continuation_head
    logits = path[..., model.deter_dim:] @ head.weight[0] + head.bias[0]  # the linear model's head reads z_t
    log_p = torch.distributions.Bernoulli(logits=logits).log_prob(x.continues.expand_as(logits))
    return torch.where(x.mask, log_p, 0.0).sum(-1)


def test_the_elbo_with_the_head_is_the_oracles_elbo_plus_the_expected_bernoulli_log_likelihood():
    head, plain = _linear_pair()
    x = _episodes(head)
    lgssm = plain.to_lgssm()  # the Bernoulli head is not linear-Gaussian: the oracle is of (o | a) alone
    log_po = lgssm.log_evidence(x)
    posterior = lgssm.posterior(x)
    q = head.guide()(head.check_data(x))
    path, log_q = q.rsample_and_log_prob((64,))
    H = head.deter_dim
    # per path: log p(o, c, z | a) − log q = [log p(o | a) − (log q − log p(z | o, a))] + log p(c | z), exactly
    elbo_draws = head.log_joint(x, path) - log_q
    expected = log_po - (log_q - posterior.log_prob(path[..., H:])) + _bernoulli(head, x, path)
    torch.testing.assert_close(elbo_draws, expected, rtol=0, atol=1e-9)
    # without the head, the same paths give the oracle's identity ELBO + KL = log p(o | a)
    torch.testing.assert_close((plain.log_joint(x, path) - log_q).mean(0) + (log_q - posterior.log_prob(
        path[..., H:])).mean(0), log_po, rtol=0, atol=1e-9)  # fmt: skip
    assert (_bernoulli(head, x, path) < 0).all()


def test_the_per_step_parts_carry_the_continuation_term_and_nothing_else_changes():
    head, plain = _linear_pair(seed=2)
    x = _episodes(head)
    torch.manual_seed(3)
    with_head = world_elbo_steps(head, x, num_samples=8)
    torch.manual_seed(3)
    without = world_elbo_steps(plain, Sequences(x.values, x.mask, inputs=x.inputs), num_samples=8)
    torch.manual_seed(3)
    path = head.guide()(head.check_data(x)).rsample_steps((8,))[0]  # the same draws as both calls
    logits = path[..., head.deter_dim:] @ head.continuation_head.weight[0] + head.continuation_head.bias[0]
    bernoulli = torch.where(x.mask, torch.distributions.Bernoulli(logits=logits).log_prob(x.continues.expand_as(
        logits)), 0.0).mean(0)  # fmt: skip
    torch.testing.assert_close(with_head.continuation, bernoulli, rtol=0, atol=1e-12)
    for name in ("observation", "reward", "kl"):
        torch.testing.assert_close(getattr(with_head, name), getattr(without, name), rtol=0, atol=1e-12)
    torch.testing.assert_close(with_head.value, without.value + bernoulli, rtol=0, atol=1e-12)
    assert (without.continuation == 0).all()
    # the objective reports the term as a part, inside the reconstruction and the bound
    objective = elbox.objectives.make_objective("world_elbo", head, head.guide(), num_samples=8)
    torch.manual_seed(3)
    out = objective(x)
    torch.testing.assert_close(out.parts["continuation"], bernoulli.sum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.value, with_head.value.sum(-1), rtol=0, atol=1e-12)
    assert "continuation" not in elbox.objectives.make_objective("world_elbo", plain, plain.guide())(
        Sequences(x.values, x.mask, inputs=x.inputs)).parts  # fmt: skip


def test_smc_weights_carry_the_flag_a_terminal_step_is_evidence():
    head, _ = _linear_pair(seed=4)
    x = _episodes(head)
    going = Sequences(x.values, x.mask, inputs=x.inputs, continues=torch.ones_like(x.continues))
    torch.manual_seed(5)
    ended = elbox.log_evidence(head, x, guide=head.guide(), method="smc", num_samples=256, num_runs=4)
    torch.manual_seed(5)
    running = elbox.log_evidence(head, going, guide=head.guide(), method="smc", num_samples=256, num_runs=4)
    # the head's bias 3 makes a terminal step unlikely: log σ(−l) − log σ(l) = −l ≈ −3 nats where it is one
    terminal = x.continues.eq(0).any(-1)
    difference = ended.value - running.value
    se = (ended.stderr.square() + running.stderr.square()).sqrt()
    assert (difference[terminal] < -1.0 + 4 * se[terminal]).all()
    torch.testing.assert_close(difference[~terminal], torch.zeros_like(difference[~terminal]))


def test_a_head_without_flags_and_bad_flags_are_refused_naming_continues():
    head, _ = _linear_pair()
    x = _episodes(head)
    with pytest.raises(ValueError, match=r"continuation head \(continuation=True\).*continues \[B, T\]"):
        head.check_data(Sequences(x.values, x.mask, inputs=x.inputs))
    with pytest.raises(ValueError, match="continuation head"):
        elbox.elbo(head, head.guide(), Sequences(x.values, x.mask, inputs=x.inputs))
    half = x.continues.clone()
    half[1, 2] = 0.5
    with pytest.raises(ValueError, match=r"continues must hold 0 \(a terminal step\) or 1; sequence 1 has 0.5 at "
                                         "step 2"):
        head.check_data(Sequences(x.values, x.mask, inputs=x.inputs, continues=half))
    early = x.continues.clone()
    early[0, 2] = 0.0
    with pytest.raises(ValueError, match="sequence 0 is terminal .0. at step 2, before its last step 5"):
        head.check_data(Sequences(x.values, x.mask, inputs=x.inputs, continues=early))
    with pytest.raises(ValueError, match=r"continues must have shape \[B, T\] = \[5, 6\]"):
        Sequences(x.values, x.mask, inputs=x.inputs, continues=torch.ones(5, 5))
    with pytest.raises(TypeError, match="continuation=False"):
        head.to_lgssm()
    with pytest.raises(TypeError, match="continuation must be True or False"):
        WorldModel(2, 1, continuation=1)
    with pytest.raises(TypeError, match="no continuation head"):
        _linear_pair()[1].continuation_probability(torch.zeros(3, 4))
    # flags a model without the head does not read are dropped, as rewards are
    assert _linear_pair()[1].check_data(x).continues is None


def test_sequences_carry_the_flags_through_padding_indexing_trimming_conversion_and_files(tmp_path):
    seqs = Sequences.from_list([torch.randn(4, 2), torch.randn(2, 2)], rewards=[torch.randn(4), torch.randn(2)],
                               continues=[torch.tensor([1.0, 1, 1, 0]), torch.tensor([1.0, 1])])  # fmt: skip
    assert seqs.continues.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # padded with 1
    assert seqs[1].continues.tolist() == [[1, 1, 1, 1]] and seqs[1:].trimmed().continues.shape == (1, 2)
    assert seqs.to(torch.float64).continues.dtype == torch.float64 and "continues" in repr(seqs)
    flags = torch.tensor([[True, False], [True, True]])  # booleans: True goes on
    checked = elbox.data.as_sequences(Sequences(torch.randn(2, 2, 1), continues=flags), event_shape=(1,),
                                      continues=True)  # fmt: skip
    assert checked.continues.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    path = tmp_path / "episodes.npz"
    np.savez(path, x=np.zeros((2, 3, 1)), lengths=np.array([3, 2]), continues=np.array([[1, 1, 0], [1, 1, 1]]))
    loaded = elbox.data.load_file(path)
    assert loaded.continues.tolist() == [[1, 1, 0], [1, 1, 1]] and loaded.rewards is None
    # the time split's training part cuts a sequence before its end: the cut end goes on
    from elbox.runs.data import _prefix

    cut = _prefix(loaded, torch.tensor([2, 2]))
    assert cut.continues.tolist() == [[1, 1], [1, 1]]
    assert _prefix(loaded, torch.tensor([3, 2])).continues.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_collect_flags_cartpoles_terminal_steps_and_never_pendulums(tmp_path):
    from elbox.envs import collect, load_episodes

    cart = collect("cartpole", 12, steps=40, seed=0)
    ended = cart.lengths < 40  # the pole fell before the step limit
    assert ended.any()
    for n, length in enumerate(cart.lengths):
        expected = np.ones(cart.x.shape[1], np.float32)
        if ended[n]:
            expected[length - 1] = 0.0
        np.testing.assert_array_equal(cart.continues[n], expected)
    pendulum = collect("pendulum", 3, steps=6, seed=0)
    assert (pendulum.continues == 1).all()  # Pendulum-v1 never terminates: the limit only cuts it
    cart.save(tmp_path / "cart.npz")
    np.testing.assert_array_equal(load_episodes(tmp_path / "cart.npz").continues, cart.continues)
    seqs = elbox.data.load_file(tmp_path / "cart.npz")
    assert seqs.continues.tolist() == torch.from_numpy(cart.continues).double().tolist()
    from typer.testing import CliRunner

    from elbox.cli.main import app

    out = tmp_path / "cli.npz"
    result = CliRunner().invoke(app, ["collect", "cartpole", "--episodes", "3", "--steps", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as archive:
        np.testing.assert_array_equal(archive["continues"], collect("cartpole", 3, steps=30, seed=0).continues)


def test_imagine_returns_the_continuation_probabilities():
    torch.manual_seed(0)
    model = WorldModel(3, 1, latent_dim=4, deter_dim=8, hidden=16, continuation=True)
    x = Sequences(torch.randn(2, 5, 3), inputs=torch.randn(2, 5, 1), rewards=torch.randn(2, 5),
                  continues=torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))  # fmt: skip
    imagined = model.imagine(model.filter(x[:1]), torch.randn(7, 4, 1), sample=False)
    assert imagined.continues.shape == (7, 4) and ((imagined.continues > 0) & (imagined.continues < 1)).all()
    path = torch.cat([imagined.h, imagined.z], -1)
    torch.testing.assert_close(imagined.continues, model.continuation_logits(path).sigmoid())
    plain = WorldModel(3, 1, latent_dim=4, deter_dim=8, hidden=16)
    assert plain.imagine(plain.filter(x[:1]), torch.randn(7, 4, 1)).continues is None


class _Cliff:
    """Dynamics whose every step pays 1, and a positive action ends the episode at once."""

    action_dim = 1

    def imagine(self, state, actions, *, sample=True):
        from types import SimpleNamespace

        rewards = torch.ones(actions.shape[:2], dtype=actions.dtype)
        return SimpleNamespace(rewards=rewards, continues=(actions[..., 0] <= 0).to(actions.dtype))


def test_cem_weights_rewards_by_the_probability_that_the_episode_is_running():
    from elbox.planning import cem_plan
    from elbox.planning.cem import _returns

    rewards, continues = torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[0.5, 0.5, 0.0]])
    # the step that ends the episode still pays: 1 + 0.5·2 + 0.25·4
    torch.testing.assert_close(_returns(rewards, continues), torch.tensor([3.0]))
    torch.testing.assert_close(_returns(rewards, None), torch.tensor([7.0]))
    plan = cem_plan(_Cliff(), None, horizon=5, candidates=200, iterations=4, top_k=20, action_low=-1, action_high=1,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    # the last step's action is free (the step that ends the episode still pays), the others keep it running
    assert (plan.actions[:-1] <= 0).all() and plan.predicted_return == pytest.approx(5.0)


def test_a_world_run_with_the_continuation_head_trains_on_collected_cartpole(tmp_path):
    from elbox.envs import collect
    from elbox.runs import load_config, train_run

    collect("cartpole", 12, steps=20, seed=0).save(tmp_path / "cart.npz")
    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "world_model_pendulum.toml")
    config["data"]["path"] = str(tmp_path / "cart.npz")
    config["data"]["test"] = 3
    config["model"].update(deter_dim=8, hidden=16, latent_dim=3, continuation=True)
    config["train"]["epochs"] = 2
    result = train_run(None, tmp_path / "run", config=config)
    assert result["model"].has_continuation
    metrics = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"bound"' in line]
    assert '"continuation"' in metrics[-1]
    run = elbox.load_run(tmp_path / "run")
    assert run.model.has_continuation and run.model.continuation_head is not None
