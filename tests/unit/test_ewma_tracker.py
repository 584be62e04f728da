"""The debiased weight EWMA against its closed form, and the in-trainer helper around a module."""

import pytest
import torch
from torch import nn

from logit_client.ewma import DebiasedEWMA, WeightEWMA, ewma_beta_from_age
from logit_client.loss import decoupled_ppo_loss

F64 = torch.float64
STATES = [
    {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64), "b": torch.tensor([0.0, 1.0], dtype=F64)},
    {"w": torch.tensor([[2.0, 0.0], [1.5, -1.0]], dtype=F64), "b": torch.tensor([4.0, -0.5], dtype=F64)},
    {"w": torch.tensor([[-3.0, 1.0], [0.0, 2.0]], dtype=F64), "b": torch.tensor([-1.0, 2.0], dtype=F64)},
    {"w": torch.tensor([[0.25, 5.0], [2.0, 0.0]], dtype=F64), "b": torch.tensor([2.5, 0.75], dtype=F64)},
]

def _explicit_average(states, beta):
    """θ̄_n = Σ_i β^{n−i} θ_i / Σ_i β^{n−i}, written out term by term."""
    n = len(states)
    weights = [beta ** (n - 1 - i) for i in range(n)]
    return {key: sum(w * s[key] for w, s in zip(weights, states)) / sum(weights) for key in states[0]}, sum(weights)


@pytest.mark.parametrize("beta", [0.3, 0.9])
def test_debiased_ewma_matches_the_explicit_weighted_sum(beta):
    ewma = DebiasedEWMA(beta, accumulate_dtype=torch.float64)
    for n in range(1, len(STATES) + 1):
        ewma.fold(STATES[n - 1])
        expected, weight_sum = _explicit_average(STATES[:n], beta)

        average = ewma.average()
        for key in expected:
            torch.testing.assert_close(average[key], expected[key], rtol=1e-14, atol=1e-14)
        assert ewma.weight_sum == pytest.approx(weight_sum, rel=1e-14)
        assert ewma.num_folded == n


def test_first_fold_is_the_weights_exactly():
    # No zero-initialised accumulator pulls the average towards 0: θ̄_1 = θ_1 bit for bit.
    theta = {"w": torch.randn(5, 3, generator=torch.Generator().manual_seed(0))}
    ewma = DebiasedEWMA(0.99)
    ewma.fold(theta)

    assert torch.equal(ewma.average()["w"], theta["w"])
    assert ewma.weight_sum == 1.0


def test_state_round_trip_continues_identically():
    ewma = DebiasedEWMA(0.8, accumulate_dtype=torch.float64)
    for state in STATES[:2]:
        ewma.fold(state)
    restored = DebiasedEWMA.from_state(ewma.state())
    for tracker in (ewma, restored):
        tracker.fold(STATES[2])

    assert restored.num_folded == 3 and restored.weight_sum == ewma.weight_sum
    assert restored.accumulate_dtype == torch.float64
    for key, value in ewma.average().items():
        assert torch.equal(restored.average()[key], value)


def test_state_is_a_copy():
    ewma = DebiasedEWMA(0.5)
    ewma.fold({"w": torch.ones(2)})
    state = ewma.state()
    state["sums"]["w"].fill_(100.0)

    assert torch.equal(ewma.average()["w"], torch.ones(2))


@pytest.mark.parametrize(("age", "beta"), [(1.0, 0.5), (3.0, 0.75), (0.25, 0.2), (9.0, 0.9)])
def test_beta_from_age(age, beta):
    assert ewma_beta_from_age(age) == pytest.approx(beta, rel=1e-15)
    # The centre of mass β/(1−β) of the weights β^k is the requested age.
    assert ewma_beta_from_age(age) / (1 - ewma_beta_from_age(age)) == pytest.approx(age, rel=1e-12)
    assert WeightEWMA(nn.Linear(2, 2), target_age_versions=age).beta == pytest.approx(beta, rel=1e-15)


def _set_weights(module, state):
    with torch.no_grad():
        module.weight.copy_(state["w"])
        module.bias.copy_(state["b"])


def test_weight_ewma_tracks_the_closed_form_over_updates():
    module = nn.Linear(2, 2).double()
    _set_weights(module, STATES[0])
    tracker = WeightEWMA(module, beta=0.6, accumulate_dtype=torch.float64)
    for state in STATES[1:]:
        _set_weights(module, state)
        tracker.update(module)

    expected, _ = _explicit_average(STATES, 0.6)
    averaged = tracker.state_dict()
    torch.testing.assert_close(averaged["weight"], expected["w"], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(averaged["bias"], expected["b"], rtol=1e-14, atol=1e-14)
    assert tracker.num_updates == 3
    assert tracker.ewma.num_folded == 4  # construction folds θ_0


def test_weight_ewma_starts_at_the_weights_and_keeps_their_dtype():
    module = nn.Linear(4, 3).to(torch.bfloat16)
    tracker = WeightEWMA(module, beta=0.9)

    averaged = tracker.state_dict()
    assert averaged["weight"].dtype == torch.bfloat16
    assert torch.equal(averaged["weight"], module.weight)
    assert torch.equal(averaged["bias"], module.bias)


def _batchnorm_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _train_steps(module, tracker, steps):
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(steps):
        module(torch.randn(8, 3)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        tracker.update(module)


def test_swapped_into_uses_the_average_and_restores_exactly():
    module = _batchnorm_net()
    tracker = WeightEWMA(module, target_age_versions=2.0)
    _train_steps(module, tracker, 3)
    before = {name: t.clone() for name, t in module.state_dict().items()}
    identities = {name: id(p) for name, p in module.named_parameters()}
    averaged = tracker.state_dict()

    with tracker.swapped_into(module) as swapped:
        assert swapped is module
        live = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        assert all(torch.equal(live[name], value) for name, value in averaged.items())
        assert not torch.equal(module[0].weight, before["0.weight"])  # the average lags the weights

    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert {name: id(p) for name, p in module.named_parameters()} == identities
    # The integer step counter is not averaged and never touched.
    assert "1.num_batches_tracked" not in averaged and after["1.num_batches_tracked"].item() == 3


def test_swapped_into_restores_after_an_exception():
    module = _batchnorm_net()
    tracker = WeightEWMA(module, beta=0.5)
    _train_steps(module, tracker, 2)
    before = {name: t.clone() for name, t in module.state_dict().items()}

    with pytest.raises(RuntimeError, match="boom"):
        with tracker.swapped_into(module):
            raise RuntimeError("boom")

    assert all(torch.equal(module.state_dict()[name], before[name]) for name in before)


def test_copy_to_another_module():
    module = _batchnorm_net()
    tracker = WeightEWMA(module, beta=0.5)
    _train_steps(module, tracker, 2)
    target = _batchnorm_net()

    tracker.copy_to(target)

    for name, value in tracker.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)
    with pytest.raises(ValueError, match="does not match"):
        tracker.copy_to(nn.Linear(3, 4))


class _TinyPolicy(nn.Module):
    """A bigram language model: enough to produce per-token log-probs of a sampled sequence."""

    def __init__(self, vocab: int = 11, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def logprobs(self, token_ids: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.embed(token_ids[:, :-1]))
        return torch.log_softmax(logits, dim=-1).gather(-1, token_ids[:, 1:, None]).squeeze(-1)


def test_averaged_model_serves_as_proximal_policy():
    torch.manual_seed(0)
    policy = _TinyPolicy()
    tracker = WeightEWMA(policy, target_age_versions=1.0)
    token_ids = torch.randint(0, 11, (3, 6))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    for _ in range(3):
        (-policy.logprobs(token_ids).mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
        tracker.update(policy)

    with torch.no_grad(), tracker.swapped_into(policy):
        proximal_logprobs = policy.logprobs(token_ids)
    reference = _TinyPolicy()
    tracker.copy_to(reference)
    policy_logprobs = policy.logprobs(token_ids)
    out = decoupled_ppo_loss(
        policy_logprobs=policy_logprobs, proximal_logprobs=proximal_logprobs,
        behavior_logprobs=proximal_logprobs + 0.01, advantages=torch.ones(3, 5),
        loss_mask=torch.ones(3, 5, dtype=torch.bool),
    )  # fmt: skip
    out.loss.backward()

    with torch.no_grad():
        assert torch.equal(proximal_logprobs, reference.logprobs(token_ids))
    # The policy climbed on these tokens; the average lags behind it, so r > 1.
    assert (policy_logprobs > proximal_logprobs).all()
    assert out.metrics["loss/approx_kl"] > 0.0
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="neither beta nor age"),
        pytest.param({"beta": 0.5, "target_age_versions": 1.0}, id="both beta and age"),
        pytest.param({"beta": 0.0}, id="beta zero"),
        pytest.param({"beta": 1.0}, id="beta one"),
        pytest.param({"beta": -0.1}, id="beta negative"),
        pytest.param({"target_age_versions": 0.0}, id="age zero"),
        pytest.param({"target_age_versions": -2.0}, id="age negative"),
    ],
)
def test_invalid_weight_ewma_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        WeightEWMA(nn.Linear(2, 2), **kwargs)


def test_invalid_folds_raise():
    ewma = DebiasedEWMA(0.5)
    with pytest.raises(RuntimeError, match="nothing folded"):
        ewma.average()
    with pytest.raises(ValueError, match="floating-point"):
        ewma.fold({"step": torch.tensor(3)})
    ewma.fold({"w": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="missing"):
        ewma.fold({"v": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="shape"):
        ewma.fold({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="accumulate_dtype"):
        DebiasedEWMA(0.5, accumulate_dtype=torch.int64)
    assert ewma.num_folded == 1
