"""Each sampling filter and penalty against a distribution computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from llm_infer.sampling import (
    SamplingParams,
    argmax,
    draw,
    probabilities,
    process_logits,
    sample,
)

P = [0.5, 0.25, 0.15, 0.1]  # a distribution whose logits are log(P)
LOGITS = torch.tensor([math.log(p) for p in P])


def dist(**params):
    return probabilities(LOGITS, SamplingParams.from_kwargs(**params))


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=0)


def test_plain_sampling_is_the_softmax():
    close(dist(), P)


def test_greedy_is_one_hot_at_the_argmax():
    close(dist(temperature=0), [1, 0, 0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_argmax_agrees_with_torch_on_ties_and_nans(dtype):
    torch.manual_seed(0)
    cases = [
        torch.randn(32000),
        torch.tensor([1.0, 3.0, 3.0, 2.0]),  # a tie: the first
        torch.tensor([1.0, float("nan"), 5.0, float("nan")]),  # a NaN counts as the largest
        torch.tensor([float("-inf"), float("-inf"), -1e30]),
        torch.tensor([float("-inf"), float("-inf")]),
    ]
    for logits in cases:
        logits = logits.to(dtype)
        assert argmax(logits) == int(torch.argmax(logits)), logits


def test_greedy_without_edits_does_not_copy_the_logits():
    logits = torch.randn(50)
    assert process_logits(logits, SamplingParams(temperature=0.0)) is logits
    edited = process_logits(logits, SamplingParams(temperature=0.0, logit_bias={3: 1.0}))
    assert edited is not logits and edited[3] == logits[3] + 1.0


@pytest.mark.parametrize("t", [1e-6, 1e-40, 5e-324])
def test_temperatures_too_small_to_divide_by_are_greedy(t):
    # logits / 1e-40 overflow to inf and softmax to NaN; vLLM treats t < 1e-5 as greedy too
    close(dist(temperature=t), [1, 0, 0, 0])
    assert sample(LOGITS * 100, SamplingParams.from_kwargs(temperature=t)) == 0


def test_temperature():
    t = 0.5  # p^(1/t), renormalised
    want = [p ** (1 / t) for p in P]
    close(dist(temperature=t), [w / sum(want) for w in want])


def test_top_k():
    close(dist(top_k=2), [0.5 / 0.75, 0.25 / 0.75, 0, 0])


def test_top_p_keeps_the_token_that_crosses_p():
    close(dist(top_p=0.6), [0.5 / 0.75, 0.25 / 0.75, 0, 0])  # 0.5 < 0.6, so 0.25 is kept
    close(dist(top_p=0.5), [1, 0, 0, 0])  # 0.5 alone reaches 0.5
    close(dist(top_p=0.8), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0])


def test_min_p():
    close(dist(min_p=0.3), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0])  # 0.1 < 0.3 * 0.5


def test_filters_compose_in_order():
    close(dist(top_k=3, min_p=0.4), [0.5 / 0.75, 0.25 / 0.75, 0, 0])


def test_logit_bias():
    want = [P[0], P[1], P[2] * math.e**2, P[3]]
    close(dist(logit_bias={2: 2.0}), [w / sum(want) for w in want])


def test_repetition_penalty_hf_rule():
    logits = torch.tensor([2.0, -1.0, 0.5])
    params = SamplingParams(repetition_penalty=2.0, temperature=0)
    from llm_infer.sampling import process_logits

    got = process_logits(logits, params, seen=torch.tensor([0, 1]))
    close(got, [1.0, -2.0, 0.5])


def test_presence_and_frequency_penalties():
    counts = torch.tensor([3, 0, 1, 0])
    got = probabilities(
        LOGITS, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), counts=counts
    )
    shifted = [
        math.log(P[0]) - 0.5 - 0.75,
        math.log(P[1]),
        math.log(P[2]) - 0.5 - 0.25,
        math.log(P[3]),
    ]
    want = torch.softmax(torch.tensor(shifted), -1)
    torch.testing.assert_close(got, want)


def test_banned_tokens_never_come():
    got = probabilities(LOGITS, SamplingParams(), banned=[0])
    close(got, [0, 0.25 / 0.5, 0.15 / 0.5, 0.1 / 0.5])


def test_sample_frequencies_follow_the_distribution():
    params = SamplingParams(top_k=3)
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample(LOGITS, params, gen) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.15, 0]) / 0.9, atol=0.03, rtol=0)


def test_draws_follow_the_distribution_as_torch_multinomial_does():
    # a real vocabulary's shape: most ids filtered to probability zero, the rest uneven
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(49152, generator=gen) * 3, dim=-1)
    probs[probs < probs.topk(6).values[-1]] = 0
    n = 6000
    ours = torch.tensor([draw(probs, gen) for _ in range(n)])
    torch_draws = torch.multinomial(probs, n, replacement=True, generator=gen)
    want = probs / probs.sum()
    for got in (ours, torch_draws):
        freq = torch.bincount(got, minlength=probs.numel()).double() / n
        assert freq[want == 0].sum() == 0  # never an id of probability zero
        torch.testing.assert_close(freq, want.double(), atol=0.02, rtol=0)


def test_draw_at_the_ends_of_the_unit_interval(monkeypatch):
    probs = torch.tensor([0.0, 0.0, 0.3, 0.0, 0.7, 0.0])
    # a draw of 0 takes the first possible id; one that rounds up to the total the last
    for u, want in ((0.0, 2), (1.0, 4), (0.29, 2), (0.31, 4)):
        monkeypatch.setattr(
            torch, "rand", lambda *a, u=u, **k: torch.tensor(u, dtype=torch.float64)
        )
        assert draw(probs) == want


def test_same_seed_same_draws():
    params = SamplingParams()
    a = [sample(LOGITS, params, torch.Generator().manual_seed(4)) for _ in range(5)]
    b = [sample(LOGITS, params, torch.Generator().manual_seed(4)) for _ in range(5)]
    assert a == b


@pytest.mark.parametrize("stop", ["ab", ["ab", "cd"], None])
def test_stop_accepts_a_string_or_a_list(stop):
    params = SamplingParams.from_kwargs(stop=stop)
    assert isinstance(params.stop, tuple)
