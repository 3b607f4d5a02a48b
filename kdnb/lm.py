"""A language model in miniature: a language whose true distribution is known, a tiny causal
transformer that trains several seeds at once, its seeded sampler, the loop that trains a
student with a per-token method (``kdnb.methods.tokens``), and exact scores.

* :class:`HMMLanguage`: a hidden Markov model over a few dozen tokens, fixed-length sequences.
  The forward algorithm gives the exact ``p(x_t | x_<t)`` of every prefix, so a model is scored
  against the truth, not only by perplexity on samples. Each state has a few frequent tokens and
  a few **rare** ones: the rare continuations are the language's dark knowledge.
* :class:`TinyLM`: ``members`` independent causal transformers held as one module (every weight
  has a leading member axis, every product is a batched matmul): five seeds train in one loop.
  Input position 0 is a BOS token, so position ``t`` predicts token ``t``.
* :func:`sample`: ancestral sampling with Gumbel noise drawn from one generator per member, so a
  member's samples depend on its seed only.
* :func:`fit`: a student trained by a method on sequences from the method's ``source``: the data,
  the teacher's samples (sequence-level KD) or the student's own (on-policy).
* :func:`score`: KL from the true language to a model (exact per prefix, averaged over true
  sequences), its coverage of rare continuations, its agreement with a teacher and the quality of
  its own samples under the true language.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_number, check_positive_int


def check_seeds(seeds):
    seeds = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    return seeds


def generators(seeds, salt=0):
    """One torch.Generator per seed (``salt`` separates a seed's streams: weights, batches, noise)."""
    return [torch.Generator().manual_seed(s * 1_000_003 + salt) for s in check_seeds(seeds)]


def check_tokens(name, x, vocab, length=None):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor of token ids, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or (length is not None and x.shape[-1] != length):
        raise ValueError(f"{name} must have shape (..., {length or 'length'}), got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() >= vocab):
        raise ValueError(f"{name} must hold token ids in [0, {vocab - 1}], got values in "
                         f"[{x.min().item()}, {x.max().item()}]")


class HMMLanguage:
    """A hidden Markov model: ``start`` (H,), ``transition`` (H, H), ``emission`` (H, V), float64,
    sequences of ``length`` tokens. Build one with :meth:`make`."""

    def __init__(self, start, transition, emission, length):
        self.start, self.transition, self.emission = (t.double() for t in (start, transition, emission))
        self.length = check_positive_int("length", length)
        H, V = self.emission.shape
        if self.start.shape != (H,) or self.transition.shape != (H, H):
            raise ValueError(f"start must have shape ({H},) and transition ({H}, {H}), got "
                             f"{tuple(self.start.shape)} and {tuple(self.transition.shape)}")
        for name, p in (("start", self.start), ("transition", self.transition), ("emission", self.emission)):
            if (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones(()).double()):
                raise ValueError(f"{name} must hold probabilities that sum to 1 along its last axis")
        self.states, self.vocab = H, V

    @classmethod
    def make(cls, seed, states=8, vocab=32, length=16, frequent=3, rare=2, rare_mass=0.08,
             floor_mass=0.01):
        """A random language from ``seed``: each hidden state has its own ``frequent`` tokens (mass
        ``1 − rare_mass − floor_mass``), ``rare`` tokens drawn from the tokens no state emits often
        (``rare_mass`` between them), and a floor (``floor_mass`` spread over every token), so no
        sequence has probability 0. Transitions are peaked (Dirichlet 0.3, mixed with 5 % uniform):
        each state moves to a few next states, mostly."""
        for name, v in (("states", states), ("vocab", vocab), ("length", length), ("frequent", frequent)):
            check_positive_int(name, v)
        check_number("rare_mass", rare_mass, low=0, high=1, high_open=True)
        check_number("floor_mass", floor_mass, low=0, high=1 - rare_mass, low_open=True, high_open=True)
        g = torch.Generator().manual_seed(int(seed))
        gamma = lambda a, shape: torch._standard_gamma(torch.full(shape, float(a), dtype=torch.float64),
                                                       generator=g)
        dirichlet = lambda a, shape: (lambda x: x / x.sum(-1, keepdim=True))(gamma(a, shape))
        if states * frequent + rare > vocab:
            raise ValueError(f"states * frequent + rare must be at most vocab={vocab} (each state has its "
                             f"own frequent tokens), got {states} * {frequent} + {rare}")
        order = torch.randperm(vocab, generator=g)
        pool = order[states * frequent:]                 # tokens no state emits often
        emission = torch.empty(states, vocab, dtype=torch.float64)
        for h in range(states):
            row = torch.full((vocab,), floor_mass / vocab, dtype=torch.float64)
            own = order[h * frequent:(h + 1) * frequent]
            row[own] += (1 - rare_mass - floor_mass) * dirichlet(2.0, (frequent,))
            if rare:
                row[pool[torch.randperm(len(pool), generator=g)[:rare]]] += rare_mass / rare
            emission[h] = row / row.sum()
        transition = dirichlet(0.3, (states, states)) * 0.95 + 0.05 / states
        start = dirichlet(1.0, (states,))
        return cls(start, transition, emission, length)

    def __repr__(self):
        return f"HMMLanguage({self.states} hidden states, {self.vocab} tokens, length {self.length})"

    def sample(self, n, generator):
        """``n`` sequences (n, length), int64, drawn from ``generator``."""
        check_positive_int("n", n)
        h = torch.multinomial(self.start.expand(n, -1), 1, generator=generator).squeeze(1)
        out = torch.empty(n, self.length, dtype=torch.int64)
        for t in range(self.length):
            out[:, t] = torch.multinomial(self.emission[h], 1, generator=generator).squeeze(1)
            h = torch.multinomial(self.transition[h], 1, generator=generator).squeeze(1)
        return out

    def next_token_probs(self, x):
        """Exact ``p(x_t = v | x_<t)`` for every position of every sequence: (..., length, V),
        float64, by the forward algorithm."""
        check_tokens("x", x, self.vocab, self.length)
        shape = x.shape[:-1]
        x = x.reshape(-1, self.length)
        belief = self.start.expand(len(x), -1)          # p(h_t | x_<t)
        out = torch.empty(len(x), self.length, self.vocab, dtype=torch.float64)
        for t in range(self.length):
            out[:, t] = belief @ self.emission
            post = belief * self.emission[:, x[:, t]].T  # ∝ p(h_t | x_≤t)
            belief = (post / post.sum(1, keepdim=True)) @ self.transition
        return out.reshape(*shape, self.length, self.vocab)

    def log_prob(self, x):
        """Exact ``log p(x)`` of each sequence (...,), float64."""
        p = self.next_token_probs(x)
        return p.gather(-1, x.unsqueeze(-1)).squeeze(-1).log().sum(-1)

    def entropy_rate(self, n=4000, seed=0):
        """Entropy per token in nats, estimated from ``n`` sampled sequences with the exact entropy
        of each next-token distribution."""
        p = self.next_token_probs(self.sample(n, torch.Generator().manual_seed(seed)))
        return float(-(p * p.log()).sum(-1).mean())

    def cache_description(self):
        from .store import tensor_hash
        return {"hmm": tensor_hash(self.start, self.transition, self.emission), "length": self.length}


class TinyLM(nn.Module):
    """``members`` causal transformers of one shape as one module: weights (members, ...). Pre-LN
    blocks of causal self-attention and a 4× MLP, learned positions, a BOS token (id ``vocab``)."""

    def __init__(self, vocab, length, d_model=32, layers=1, heads=2, members=1, seeds=None):
        super().__init__()
        for name, v in (("vocab", vocab), ("length", length), ("d_model", d_model), ("layers", layers),
                        ("heads", heads), ("members", members)):
            check_positive_int(name, v)
        if d_model % heads:
            raise ValueError(f"d_model must be a multiple of heads, got d_model={d_model}, heads={heads}")
        self.vocab, self.length, self.d_model, self.heads, self.members = vocab, length, d_model, heads, members
        M, d = members, d_model
        P = lambda *shape: nn.Parameter(torch.zeros(M, *shape))
        self.embed, self.pos = P(vocab + 1, d), P(length, d)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            b = nn.ParameterDict({"ln1_w": P(d), "ln1_b": P(d), "qkv": P(d, 3 * d), "proj": P(d, d),
                                  "ln2_w": P(d), "ln2_b": P(d), "fc1": P(d, 4 * d), "fc1_b": P(4 * d),
                                  "fc2": P(4 * d, d), "fc2_b": P(d)})
            self.blocks.append(b)
        self.lnf_w, self.lnf_b, self.head = P(d), P(d), P(d, vocab)
        self.reset(seeds if seeds is not None else list(range(members)))

    @torch.no_grad()
    def reset(self, seeds):
        """Member ``i``'s weights from ``seeds[i]`` alone (GPT-2's initialisation)."""
        seeds = check_seeds(seeds)
        if len(seeds) != self.members:
            raise ValueError(f"seeds must give one seed per member ({self.members}), got {len(seeds)}")
        for i, g in enumerate(generators(seeds, salt=1)):
            for name, p in self.named_parameters():
                leaf = name.split(".")[-1]
                if leaf.endswith("_w"):
                    p[i].fill_(1.0)
                elif leaf.endswith("_b"):
                    p[i].zero_()
                else:
                    std = 0.02 / math.sqrt(2 * len(self.blocks)) if leaf in ("proj", "fc2") else 0.02
                    p[i].copy_(torch.randn(p[i].shape, generator=g) * std)

    def config(self):
        return {"vocab": self.vocab, "length": self.length, "d_model": self.d_model, "layers": len(self.blocks),
                "heads": self.heads, "members": self.members}

    def forward(self, x):
        """Logits (members, batch, t, vocab) of the next token at each position, for tokens
        x (members, batch, t) with t ≤ length; position j sees BOS and x[..., :j]."""
        M, B, t = x.shape
        if M != self.members or t > self.length:
            raise ValueError(f"x must have shape ({self.members}, batch, t ≤ {self.length}), got {tuple(x.shape)}")
        inp = torch.cat([torch.full((M, B, 1), self.vocab, dtype=torch.int64), x[..., :-1]], -1)
        idx = inp.reshape(M, B * t) + (torch.arange(M) * (self.vocab + 1))[:, None]
        h = self.embed.reshape(-1, self.d_model)[idx].reshape(M, B, t, -1) + self.pos[:, None, :t]
        mm = lambda a, w: torch.bmm(a.reshape(M, -1, a.shape[-1]), w).reshape(*a.shape[:-1], w.shape[-1])
        ln = lambda a, w, b: F.layer_norm(a, a.shape[-1:]) * w[:, None, None] + b[:, None, None]
        H, dh = self.heads, self.d_model // self.heads
        for b in self.blocks:
            q, k, v = mm(ln(h, b["ln1_w"], b["ln1_b"]), b["qkv"]).split(self.d_model, -1)
            heads = lambda a: a.reshape(M * B, t, H, dh).transpose(1, 2)
            a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
            h = h + mm(a.transpose(1, 2).reshape(M, B, t, self.d_model), b["proj"])
            z = F.gelu(mm(ln(h, b["ln2_w"], b["ln2_b"]), b["fc1"]) + b["fc1_b"][:, None, None])
            h = h + mm(z, b["fc2"]) + b["fc2_b"][:, None, None]
        return mm(ln(h, self.lnf_w, self.lnf_b), self.head)

    def member(self, i):
        """Member ``i`` as a one-member TinyLM (a copy)."""
        one = TinyLM(self.vocab, self.length, self.d_model, len(self.blocks), self.heads, 1, seeds=[0])
        with torch.no_grad():
            for (_, p), (_, q) in zip(one.named_parameters(), self.named_parameters()):
                p.copy_(q[i:i + 1])
        return one


@torch.no_grad()
def sample(model, n, gens, temperature=1.0):
    """``n`` sequences per member (members, n, length), ancestral sampling by the Gumbel-max trick;
    member ``i``'s noise comes from ``gens[i]`` only, so its samples depend on its seed alone."""
    check_positive_int("n", n)
    check_number("temperature", temperature, low=0, low_open=True)
    if not isinstance(gens, (list, tuple)) or len(gens) != model.members or not all(
            isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"gens must be a list of {model.members} torch.Generator (one per member), got {gens!r}")
    L, V = model.length, model.vocab
    gumbel = torch.stack([-torch.log(-torch.log(torch.rand(n, L, V, generator=g).clamp_min(1e-20)))
                          for g in gens])
    x = torch.zeros(model.members, n, 0, dtype=torch.int64)
    for t in range(L):
        logits = model(torch.cat([x, x.new_zeros(*x.shape[:2], 1)], -1))[..., t, :]
        x = torch.cat([x, (logits / temperature + gumbel[:, :, t]).argmax(-1, keepdim=True)], -1)
    return x


@dataclass
class TokenBatch:
    """Sequences (members, batch, length) a method trains on; ``y`` is ``x``: position t's target
    is token t, which the model predicts from BOS and the tokens before it."""
    x: torch.Tensor
    rows: torch.Tensor = None  # (members, batch): which rows of the data, when the source is the data

    @property
    def y(self):
        return self.x


SOURCES = ("data", "teacher", "student")


def fit(student, method, seeds, steps, data=None, batch_size=32, lr=3e-3, teacher_sequences=None):
    """Train ``student`` (a TinyLM of ``len(seeds)`` members) for ``steps`` Adam steps (learning
    rate decaying to 0 on a cosine) on ``method``'s summed terms. Each step's batch comes from the
    method's ``source``: ``"data"`` (rows of ``data``, (n, length)), ``"teacher"`` (rows of
    ``teacher_sequences``, (members, n, length): the teacher's samples) or ``"student"`` (fresh
    samples of the student itself). Member i's batches and noise come from ``seeds[i]``. Returns
    the loss per step, (steps, members)."""
    seeds = check_seeds(seeds)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_number("lr", lr, low=0, low_open=True)
    source = getattr(method, "source", None)
    if source not in SOURCES:
        raise ValueError(f"method.source must be one of {SOURCES}, got {source!r}")
    if len(seeds) != student.members:
        raise ValueError(f"seeds must give one seed per student member ({student.members}), got {len(seeds)}")
    if source == "data":
        if data is None:
            raise ValueError("data must be given (n, length) token ids for a method whose source is 'data'")
        check_tokens("data", data, student.vocab, student.length)
        rows = data.expand(student.members, *data.shape)
        if hasattr(method, "tabulate"):
            method.tabulate(data)  # e.g. the teacher's logits on every row, once
    if source == "teacher":
        if teacher_sequences is None or teacher_sequences.shape[0] != student.members:
            raise ValueError("teacher_sequences must be given, (members, n, length), for a method whose "
                             "source is 'teacher'")
        check_tokens("teacher_sequences", teacher_sequences, student.vocab, student.length)
        rows = teacher_sequences
    batches, noise = generators(seeds, salt=2), generators(seeds, salt=3)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    log = torch.empty(steps, student.members)
    for step in range(steps):
        if source == "student":
            x = sample(student, batch_size, noise)
        else:
            idx = torch.stack([torch.randint(rows.shape[1], (batch_size,), generator=g) for g in batches])
            x = rows.gather(1, idx[..., None].expand(-1, -1, rows.shape[-1]))
        batch = TokenBatch(x, None if source == "student" else idx)
        terms = method.losses(student(x), batch)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log[step] = getattr(method, "_per_member", loss.detach().expand(student.members))
    return log


def probs_of(model, x, chunk=500):
    """A model's next-token probabilities (members, n, length, V), float64, on sequences x (n, length)
    shared by every member or (members, n, length)."""
    with torch.no_grad():
        x = x.expand(model.members, *x.shape) if x.dim() == 2 else x
        out = [model(x[:, i:i + chunk]).double().softmax(-1) for i in range(0, x.shape[1], chunk)]
    return torch.cat(out, 1)


def kl_rows(p, q):
    """Σ_v p log(p/q) over the last axis (q > 0; terms with p = 0 are 0)."""
    return torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.log()), torch.zeros_like(p)).sum(-1)


def score(model, language, eval_x, teacher=None, samples=1000, seed=0, rare=(0.01, 0.1)):
    """Per member (lists of floats): exact scores of ``model`` against ``language``, per token.

    * ``kl_true``: KL(true ‖ model), averaged over the true sequences ``eval_x`` (n, length), each
      prefix's KL exact: the chain rule makes its mean over sequences the sequence KL per token;
    * ``rare_coverage``: the model's mass on the rare continuations (true probability in ``rare``)
      over their true mass, on the same prefixes: 1 covers them, below 1 under-covers them;
    * ``sample_nll``: −log p_true of the model's own samples (``samples`` per member), per token;
    * ``kl_reverse``: KL(model ‖ true) on the model's own samples, per token, exact per prefix;
    * ``agree`` and ``kl_teacher`` (with ``teacher``): top-1 agreement with the teacher's next
      token and KL(teacher ‖ model), on the true prefixes."""
    p = language.next_token_probs(eval_x)                        # (n, L, V)
    q = probs_of(model, eval_x)                                   # (M, n, L, V)
    lo, hi = rare
    mask = (p >= lo) & (p < hi)
    out = {"kl_true": kl_rows(p, q).mean((1, 2)),
           "rare_coverage": (q * mask).sum((1, 2, 3)) / (p * mask).sum()}
    own = sample(model, samples, generators([seed + i for i in range(model.members)], salt=4))
    p_own, q_own = language.next_token_probs(own), probs_of(model, own)
    out["sample_nll"] = -p_own.gather(-1, own.unsqueeze(-1)).squeeze(-1).log().mean((1, 2))
    out["kl_reverse"] = kl_rows(q_own, p_own).mean((1, 2))
    if teacher is not None:
        t = probs_of(teacher, eval_x)
        out["agree"] = (q.argmax(-1) == t.argmax(-1)).double().mean((1, 2))
        out["kl_teacher"] = kl_rows(t, q).mean((1, 2))
    return {k: [float(v) for v in vals] for k, vals in out.items()}


def method_key(method):
    """What determines a method's training: its class, its code and its public settings; a teacher
    by its weights."""
    import sys
    from .store import source_hash, tensor_hash
    out = {"class": type(method).__qualname__, "code": source_hash(sys.modules[type(method).__module__])}
    for k, v in sorted(vars(method).items()):
        if k.startswith("_") or k == "training":
            continue
        out[k] = v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)
    for name, m in method.named_children():
        out[name] = tensor_hash(*m.state_dict().values())
    return out


def trained(student, method, seeds, steps, data=None, teacher_sequences=None, **fit_args):
    """:func:`fit`, cached (``kdnb.store.memo``) by everything that determines the result: the
    student's shape and seeds, the method (:func:`method_key`), the step budget and arguments, the
    data, the teacher's samples, this module's code and the thread count. Returns the trained
    student and its loss per step."""
    import sys
    from .store import memo, source_hash, tensor_hash
    config = {"student": student.config(), "seeds": list(seeds), "steps": steps, "fit": fit_args,
              "method": method_key(method), "lm": source_hash(sys.modules[__name__]),
              "data": None if data is None else tensor_hash(data),
              "teacher_sequences": None if teacher_sequences is None else tensor_hash(teacher_sequences),
              "threads": torch.get_num_threads()}

    def compute():
        student.reset(seeds)
        log = fit(student, method, seeds, steps, data=data, teacher_sequences=teacher_sequences, **fit_args)
        return {"weights": student.state_dict(), "log": log}

    got = memo("lm_students", config, compute)
    student.load_state_dict(got["weights"])
    return student, got["log"]
