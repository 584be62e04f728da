"""The probe's two decisions, made directly: which log-prob path may serve a model (within the tolerance,
never on non-finite references), and whether its answers hold in shared tiles."""

from __future__ import annotations

import pytest
import torch

from logit_service.backends import probe
from logit_service.backends.paths import LeanPath
from logit_service.backends.probe import TOLERANCE_NATS, choose_path, own_forward_logprobs, probe_tokens, tiles_hold
from tests.tiny_architectures import build_trained, causal_lm_architectures, tiny_architecture

NAMES = dict(causal_lm_architectures())
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_trained(tiny_architecture("llama", NAMES["llama"]))


def test_the_probe_sequence_is_one_fixed_sequence_over_the_whole_vocabulary():
    tokens = probe_tokens(2)
    assert tokens.shape == (1, probe.PROBE_LENGTH) and tokens.dtype == torch.int64
    assert set(tokens.flatten().tolist()) == {0, 1}  # both ends of the vocabulary
    assert torch.equal(probe_tokens(1000), probe_tokens(1000))  # every build of a model probes the same
    torch.manual_seed(123)
    first = probe_tokens(1000)
    torch.manual_seed(456)
    assert torch.equal(probe_tokens(1000), first)  # whatever the global generator holds


class _Shifted:
    """A real path whose answers are moved by `shift` nats, plus `coupling` times the other rows' token sum
    in a tile: a stand-in for a head transform the path misses, or rows that see each other."""

    def __init__(self, inner: LeanPath, shift: float, coupling: float = 0.0) -> None:
        self.inner, self.shift, self.coupling = inner, shift, coupling
        self.name = f"shifted {shift:g}"

    @property
    def chunk_tokens(self) -> int:
        return self.inner.chunk_tokens

    @chunk_tokens.setter
    def chunk_tokens(self, value: int) -> None:
        self.inner.chunk_tokens = value

    def logprobs(self, *args) -> torch.Tensor:
        return self.inner.logprobs(*args) + self.shift

    def tile_logprobs(self, ids, rows, temperature):
        answers = self.inner.tile_logprobs(ids, rows, temperature)
        return [
            answer + self.shift + self.coupling * float(ids.sum() - ids[row].sum()) for answer, (row, _, _) in zip(answers, rows)
        ]


def _offered(monkeypatch, *paths) -> None:
    monkeypatch.setattr(probe, "candidate_paths", lambda model, chunk: list(paths))


@torch.inference_mode()
def test_a_path_just_outside_the_tolerance_is_passed_over_for_one_inside(model, monkeypatch):
    tolerance = TOLERANCE_NATS["float32"]
    outside, inside = _Shifted(LeanPath(model, 8), 1.25 * tolerance), _Shifted(LeanPath(model, 8), tolerance / 4)
    _offered(monkeypatch, outside, inside)
    chosen = choose_path(model, dtype="float32", chunk_tokens=8, device=CPU)
    assert chosen.path is inside
    assert chosen.errors[outside.name] == pytest.approx(1.25 * tolerance, rel=0.05)
    assert chosen.errors[inside.name] == pytest.approx(tolerance / 4, rel=0.2)


class _Failing:
    """A path this architecture's modules cannot run, or one that answers NaN."""

    def __init__(self, name: str, answer_nan: bool = False) -> None:
        self.name, self.answer_nan, self.chunk_tokens = name, answer_nan, 8

    def logprobs(self, ids, mask, rows, cols, targets, temperature):
        if self.answer_nan:
            return torch.full(targets.shape, float("nan"))
        raise RuntimeError("this module has no such input")


@torch.inference_mode()
def test_a_path_that_fails_or_answers_nan_is_passed_over_and_says_why(model, monkeypatch):
    lean = LeanPath(model, 8)
    _offered(monkeypatch, _Failing("raises"), _Failing("nan", answer_nan=True), lean)
    chosen = choose_path(model, dtype="float32", chunk_tokens=8, device=CPU)
    assert chosen.path is lean
    assert chosen.errors["raises"] == "RuntimeError: this module has no such input"
    assert chosen.errors["nan"] == float("inf")
    assert chosen.describe().startswith("raises: RuntimeError: this module has no such input, nan: inf, lean: ")


@torch.inference_mode()
def test_no_path_within_the_tolerance_refuses_the_model(model, monkeypatch):
    _offered(monkeypatch, _Shifted(LeanPath(model, 8), 2 * TOLERANCE_NATS["float32"]))
    chosen = choose_path(model, dtype="float32", chunk_tokens=8, device=CPU)
    assert chosen.path is None and chosen.name == "refused"


def test_a_model_whose_own_forward_is_not_finite_is_refused_before_any_path(model, monkeypatch):
    tried: list[int] = []
    monkeypatch.setattr(probe, "candidate_paths", lambda model, chunk: tried.append(1) or [])
    broken = build_trained(tiny_architecture("llama", NAMES["llama"]))
    with torch.no_grad():
        broken.get_output_embeddings().weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite log-probs on the probe sequence"):
        choose_path(broken, dtype="float32", chunk_tokens=8, device=CPU)
    assert tried == []


@torch.inference_mode()
def test_the_probe_runs_in_chunks_smaller_than_itself_and_the_path_then_serves_the_configured_chunk(model):
    widths: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, out: widths.append(out.shape[-2]))
    try:
        chosen = choose_path(model, dtype="float32", chunk_tokens=1024, device=CPU)
    finally:
        handle.remove()
    assert chosen.name == "lean"
    # The own forward's full logits, then the lean head in chunks of a third of the 47 positions.
    assert widths == [probe.PROBE_LENGTH, 15, 15, 15, 2]
    assert chosen.path.chunk_tokens == 1024


def test_the_reference_is_normalised_in_float32_for_a_bfloat16_model():
    bf16 = build_trained(tiny_architecture("llama", NAMES["llama"])).to(torch.bfloat16)
    ids = probe_tokens(int(bf16.config.vocab_size))
    reference = own_forward_logprobs(bf16, ids)
    assert reference.dtype == torch.float32
    with torch.inference_mode():
        logits = bf16(input_ids=ids, use_cache=False).logits[0, :-1].float()
    assert torch.equal(reference, torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).squeeze(1))


@torch.inference_mode()
def test_answers_that_hold_in_tiles_pass_the_tile_probe(model):
    assert tiles_hold(LeanPath(model, 8), model, dtype="float32", tile_tokens=256, max_rows=4, device=CPU) is None


@torch.inference_mode()
def test_rows_that_see_each_other_fail_the_tile_probe(model):
    coupled = _Shifted(LeanPath(model, 8), 0.0, coupling=1e-9)
    reason = tiles_hold(coupled, model, dtype="float32", tile_tokens=256, max_rows=4, device=CPU)
    assert reason is not None and reason.startswith("a row's answer depends on the other rows of its tile")
    # Tiles of one row still probe the sequence beside another row: two rows at least.
    reason = tiles_hold(coupled, model, dtype="float32", tile_tokens=256, max_rows=1, device=CPU)
    assert reason is not None and reason.startswith("a row's answer depends on the other rows of its tile")


@torch.inference_mode()
def test_tile_answers_off_the_own_forward_fail_the_tile_probe(model):
    shift = 2 * TOLERANCE_NATS["float32"]
    reason = tiles_hold(_Shifted(LeanPath(model, 8), shift), model, dtype="float32", tile_tokens=256, max_rows=4, device=CPU)
    assert reason is not None and reason.startswith("answers in a padded tile differ from the model's own forward by 2.0")
    inside = _Shifted(LeanPath(model, 8), TOLERANCE_NATS["float32"] / 4)
    assert tiles_hold(inside, model, dtype="float32", tile_tokens=256, max_rows=4, device=CPU) is None


def test_the_reference_forward_builds_no_kv_cache(model):
    seen: list[dict] = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        own_forward_logprobs(model, probe_tokens(int(model.config.vocab_size)))
    finally:
        handle.remove()
    assert [kw["use_cache"] for kw in seen] == [False]



def test_the_probe_decides_the_same_whatever_the_calling_threads_default_device(model):
    # A trainer may call torch.set_default_device("cuda") on the thread that builds a backend; "meta" (a
    # device without data) stands in for it: any tensor the probe made there would fail to be read.
    plain = choose_path(model, dtype="float32", chunk_tokens=64, device=CPU)
    with torch.device("meta"):
        elsewhere = choose_path(model, dtype="float32", chunk_tokens=64, device=CPU)
        tiles = tiles_hold(plain.path, model, dtype="float32", tile_tokens=256, max_rows=4, device=CPU)
    assert elsewhere.path is not None and elsewhere.path.name == plain.path.name
    assert elsewhere.errors == plain.errors
    assert tiles is None
