"""The miniature language model of chapter 11: the language's exact probabilities, the per-token
losses against written-out formulas (with the reverse KL's gradient), the methods, the sampler's
seeding, and clear errors."""
import itertools
import math

import pytest
import torch

from kdnb import lm
from kdnb.methods import tokens


@pytest.fixture(scope="module")
def language():
    return lm.HMMLanguage.make(0, states=2, vocab=8, length=4, frequent=2, rare=2)


def test_exact_probabilities_sum_to_one(language):
    every = torch.tensor(list(itertools.product(range(language.vocab), repeat=language.length)))
    total = language.log_prob(every).exp().sum()
    assert abs(total.item() - 1) < 1e-10
    p = language.next_token_probs(every[:100])
    assert torch.allclose(p.sum(-1), torch.ones(()).double())


def test_exact_probabilities_match_sampled_frequencies(language):
    x = language.sample(60000, torch.Generator().manual_seed(1))
    pairs = x[:, 0] * language.vocab + x[:, 1]
    freq = torch.bincount(pairs, minlength=language.vocab ** 2).double() / len(x)
    grid = torch.tensor([[a, b, 0, 0] for a in range(language.vocab) for b in range(language.vocab)])
    p = language.next_token_probs(grid)
    exact = p[:, 0].gather(1, grid[:, :1]).squeeze(1) * p[:, 1].gather(1, grid[:, 1:2]).squeeze(1)
    se = (exact * (1 - exact) / len(x)).sqrt()
    assert ((freq - exact).abs() <= 5 * se + 1e-4).all()


def test_forward_algorithm_against_brute_force(language):
    """p(x_t | x_<t) by summing over every hidden path, written out."""
    x = language.sample(3, torch.Generator().manual_seed(2))
    H = language.states

    def joint(seq):
        total = 0.0
        for path in itertools.product(range(H), repeat=len(seq)):
            pr = language.start[path[0]].item()
            for t, (h, v) in enumerate(zip(path, seq)):
                pr *= language.emission[h, v].item()
                if t + 1 < len(path):
                    pr *= language.transition[h, path[t + 1]].item()
            total += pr
        return total

    p = language.next_token_probs(x)
    for i, seq in enumerate(x.tolist()):
        for t in range(1, language.length):
            want = joint(seq[:t + 1]) / joint(seq[:t])
            assert abs(p[i, t, seq[t]].item() - want) < 1e-10


def logits_pair(seed=0, shape=(3, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2, torch.randn(shape, generator=g, dtype=torch.float64) * 2


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_forward_and_reverse_kl_written_out(T):
    s, t = logits_pair()
    q = [[math.exp(v / T) for v in row] for row in s.reshape(-1, 7).tolist()]
    p = [[math.exp(v / T) for v in row] for row in t.reshape(-1, 7).tolist()]
    fwd, rev = [], []
    for qr, pr in zip(q, p):
        qr = [v / sum(qr) for v in qr]
        pr = [v / sum(pr) for v in pr]
        fwd.append(T * T * sum(a * math.log(a / b) for a, b in zip(pr, qr)))
        rev.append(T * T * sum(b * math.log(b / a) for a, b in zip(pr, qr)))
    assert torch.allclose(tokens.forward_kl(s, t, T).reshape(-1), torch.tensor(fwd, dtype=torch.float64))
    assert torch.allclose(tokens.reverse_kl(s, t, T).reshape(-1), torch.tensor(rev, dtype=torch.float64))


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_reverse_kl_gradient_is_the_analytic_one(T):
    s, t = logits_pair(1)
    s.requires_grad_(True)
    tokens.reverse_kl(s, t, T).sum().backward()
    assert torch.allclose(s.grad, tokens.reverse_kl_grad(s.detach(), t, T))
    # and written out: T q_i (log q_i − log p_i − KL), q and p softened by T
    q, p = (s.detach() / T).softmax(-1), (t / T).softmax(-1)
    kl = (q * (q.log() - p.log())).sum(-1, keepdim=True)
    assert torch.allclose(s.grad, T * q * (q.log() - p.log() - kl))
    assert torch.autograd.gradcheck(lambda z: tokens.reverse_kl(z, t, T), (s.detach().clone().requires_grad_(),))


def test_teacher_gets_no_gradient():
    s, t = logits_pair(2)
    t.requires_grad_(True)
    s.requires_grad_(True)
    (tokens.forward_kl(s, t) + tokens.reverse_kl(s, t)).sum().backward()
    assert t.grad is None


def small_lm(members=1, seeds=None, vocab=8, length=4):
    return lm.TinyLM(vocab, length, d_model=8, layers=1, heads=2, members=members, seeds=seeds)


def test_methods_against_the_formulas():
    teacher, student = small_lm(seeds=[5]), small_lm(members=2, seeds=[0, 1])
    x = torch.randint(0, 8, (2, 6, 4), generator=torch.Generator().manual_seed(0))
    batch = lm.TokenBatch(x)
    logits = student(x)
    t_logits = teacher(x.reshape(1, 12, 4)).reshape(2, 6, 4, 8).detach()
    log_q, log_p = logits.log_softmax(-1), t_logits.log_softmax(-1)
    ce = -log_q.gather(-1, x[..., None]).squeeze(-1)          # (2, 6, 4)
    fwd = (log_p.exp() * (log_p - log_q)).sum(-1)
    rev = (log_q.exp() * (log_q - log_p)).sum(-1)
    member_sum = lambda v: v.mean((1, 2)).sum()  # each member's mean, summed
    close = lambda a, b: torch.allclose(sum(a.values()), b, atol=1e-6)
    assert close(tokens.TokenCE().losses(logits, batch), member_sum(ce))
    assert close(tokens.SequenceKD().losses(logits, batch), member_sum(ce))
    assert close(tokens.WordKD(teacher).losses(logits, batch), member_sum(fwd))
    assert close(tokens.ReverseKD(teacher).losses(logits, batch), member_sum(rev))
    assert close(tokens.WordKD(teacher, alpha=0.3).losses(logits, batch),
                 member_sum(0.3 * fwd + 0.7 * ce))
    assert close(tokens.OnPolicy(teacher).losses(logits, batch), member_sum(rev))
    assert close(tokens.OnPolicy(teacher, "forward").losses(logits, batch), member_sum(fwd))
    # a tabulated teacher gives the same targets as the live one
    data = x[0]
    kd = tokens.WordKD(teacher)
    kd.tabulate(data)
    rows = torch.arange(6).expand(2, 6)
    assert close(kd.losses(logits, lm.TokenBatch(data.expand(2, 6, 4), rows)),
                 member_sum(tokens.forward_kl(logits, teacher(data[None]).expand(2, 6, 4, 8).detach())))


def test_members_train_as_separate_runs():
    """A member of a stack trains exactly as it does alone: its loss is its own."""
    data = torch.randint(0, 8, (40, 4), generator=torch.Generator().manual_seed(3))
    both = small_lm(members=2, seeds=[3, 4])
    lm.fit(both, tokens.TokenCE(), [3, 4], 5, data=data, batch_size=8)
    alone = small_lm(members=1, seeds=[4])
    lm.fit(alone, tokens.TokenCE(), [4], 5, data=data, batch_size=8)
    for (_, a), (_, b) in zip(both.named_parameters(), alone.named_parameters()):
        assert torch.allclose(a[1], b[0], atol=1e-5)


def test_sampler_is_reproducible_from_a_seed():
    model = small_lm(members=2, seeds=[0, 1])
    a = lm.sample(model, 50, lm.generators([7, 8]))
    b = lm.sample(model, 50, lm.generators([7, 8]))
    c = lm.sample(model, 50, lm.generators([7, 9]))
    assert torch.equal(a, b) and torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    assert a.shape == (2, 50, 4) and a.min() >= 0 and a.max() < 8


def test_sampler_draws_from_the_model():
    model = small_lm(seeds=[0])
    x = lm.sample(model, 20000, lm.generators([1]))
    first = torch.bincount(x[0, :, 0], minlength=8).double() / 20000
    want = model(x[:, :1, :1])[0, 0, 0].double().softmax(-1)
    assert (first - want).abs().max() < 0.02


def test_score_of_the_truth_itself(language):
    """A model that is the language scores KL 0; checked through kl_rows."""
    x = language.sample(50, torch.Generator().manual_seed(4))
    p = language.next_token_probs(x)
    assert lm.kl_rows(p, p).abs().max() < 1e-12


@pytest.mark.parametrize("call, name", [
    (lambda: tokens.forward_kl(torch.zeros(2, 5), torch.zeros(2, 4)), "teacher_logits"),
    (lambda: tokens.reverse_kl(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5)), "student_logits"),
    (lambda: tokens.reverse_kl(torch.zeros(2, 5), torch.zeros(2, 5), T=0), "T"),
    (lambda: tokens.WordKD(small_lm(), alpha=1.5), "alpha"),
    (lambda: tokens.WordKD(small_lm(members=2)), "teacher"),
    (lambda: tokens.OnPolicy(small_lm(), divergence="js"), "divergence"),
    (lambda: tokens.token_ce(torch.zeros(2, 5), torch.zeros(3, dtype=torch.long)), "tokens"),
    (lambda: lm.HMMLanguage.make(0, states=20, vocab=8), r"states \* frequent"),
    (lambda: lm.HMMLanguage.make(0, length=0), "length"),
    (lambda: lm.TinyLM(8, 4, d_model=6, heads=4), "d_model"),
    (lambda: lm.sample(small_lm(members=2), 5, lm.generators([1])), "gens"),
    (lambda: lm.sample(small_lm(), 0, lm.generators([1])), "n"),
    (lambda: lm.fit(small_lm(), tokens.TokenCE(), [0], 5), "data"),
    (lambda: lm.fit(small_lm(), tokens.TokenCE(), [0, 1], 5), "seeds"),
    (lambda: lm.fit(small_lm(), tokens.TokenCE(), [0], 0, data=torch.zeros(3, 4, dtype=torch.long)), "steps"),
    (lambda: lm.fit(small_lm(), tokens.SequenceKD(), [0], 5), "teacher_sequences"),
    (lambda: lm.fit(small_lm(), tokens.TokenCE(), [0], 5, data=torch.full((3, 4), 9)), "data"),
])
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_trained_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE", str(tmp_path))
    data = torch.randint(0, 8, (20, 4), generator=torch.Generator().manual_seed(5))
    a, log_a = lm.trained(small_lm(seeds=[2]), tokens.TokenCE(), [2], 3, data=data, batch_size=4)
    b, log_b = lm.trained(small_lm(seeds=[9]), tokens.TokenCE(), [2], 3, data=data, batch_size=4)
    assert torch.equal(log_a, log_b) and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    lm.trained(small_lm(seeds=[2]), tokens.TokenCE(), [2], 4, data=data, batch_size=4)
    assert len(list(tmp_path.rglob("*.pt"))) == 2
