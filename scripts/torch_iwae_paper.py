"""Burda, Grosse & Salakhutdinov (2015), Table 1's protocol in PyTorch, the same-protocol
reference for latent's `examples/iwae_paper.rs` (docs/iwae-paper.md):

    python scripts/torch_iwae_paper.py --model one|two --objective vae|iwae|dreg --k K \
        --passes P [--seed S --eval-k 5000 --eval-images N --out DIR --resume PATH]

- data: MNIST from data/mnist; every training batch binarized afresh (Bernoulli of the
  intensities); the test set binarized once from a fixed seed (not latent's draw: the
  generators differ, so the two programs score different binary test images of the same
  distribution).
- models: one stochastic layer (784-200-200-50, Tanh, Bernoulli logits) or two
  (q(h1|x) 784-200-200-100, q(h2|h1) 100-100-100-50, p(h1|h2) 50-100-100-100, p(x|h1)
  100-200-200-784), Glorot-uniform weights and zero biases, as `scripts/torch_interop.py`'s
  fixtures name them.
- training: Adam (0.9, 0.999, eps 1e-4), batch 20; pass i runs 3^i epochs at
  1e-3 * 10^(-i/7); the k-sample ELBO, IWAE, or IWAE with the DReG encoder gradient.
- a checkpoint after every pass (`--out/torch_iwae_paper_*.pt`), `--resume` to go on;
  at the end the IWAE-`eval-k` log-likelihood on the test images, its standard error, the
  test ELBO and the active units (first stochastic layer), appended to
  `--out/torch_iwae_paper.csv`.
"""

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_cpu_speed import mnist  # noqa: E402

HALF_LN_2PI = 0.5 * math.log(2 * math.pi)
TEST_BINARIZATION_SEED = 2015


def glorot(lin):
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(glorot(nn.Linear(a, b)))
        if i + 2 < len(sizes):
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class Gaussian(nn.Module):
    """A Tanh MLP to (mu, logvar): `net`, `mu`, `logvar`."""

    def __init__(self, inp, hidden, out):
        super().__init__()
        self.net = nn.Sequential(glorot(nn.Linear(inp, hidden)), nn.Tanh(), glorot(nn.Linear(hidden, hidden)), nn.Tanh())
        self.mu = glorot(nn.Linear(hidden, out))
        self.logvar = glorot(nn.Linear(hidden, out))

    def forward(self, x):
        h = self.net(x)
        return self.mu(h), self.logvar(h)


def log_normal(v, mu, logvar):
    return (-HALF_LN_2PI - 0.5 * logvar - 0.5 * (v - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def log_bernoulli(x, logits):
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(glorot(nn.Linear(784, 200)), nn.Tanh(), glorot(nn.Linear(200, 200)), nn.Tanh())
        self.fc_mu = glorot(nn.Linear(200, 50))
        self.fc_logvar = glorot(nn.Linear(200, 50))
        self.decoder = mlp([50, 200, 200, 784])

    def log_w(self, x, k, stop_q=False):
        """log w [b, k]; with `stop_q` log q(z|x) takes detached (mu, logvar) (DReG)."""
        h = self.encoder(x)
        mu, lv = self.fc_mu(h), self.fc_logvar(h)
        z = mu[:, None] + torch.exp(0.5 * lv)[:, None] * torch.randn(x.shape[0], k, 50)
        q_mu, q_lv = (mu.detach(), lv.detach()) if stop_q else (mu, lv)
        log_q = log_normal(z, q_mu[:, None], q_lv[:, None])
        return log_bernoulli(x[:, None], self.decoder(z)) + log_normal(z, 0.0, torch.zeros(())) - log_q, mu


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_h1 = Gaussian(784, 200, 100)
        self.q_h2 = Gaussian(100, 100, 50)
        self.p_h1 = Gaussian(50, 100, 100)
        self.p_x = mlp([100, 200, 200, 784])

    def log_w(self, x, k, stop_q=False):
        """log w [b, k]; with `stop_q` both log q terms take q's parameters detached
        (DReG): h1 and h2 keep their dependence through the samples, h1 also through
        q_h2's network."""
        mu1, lv1 = self.q_h1(x)
        h1 = mu1[:, None] + torch.exp(0.5 * lv1)[:, None] * torch.randn(x.shape[0], k, 100)
        mu2, lv2 = self.q_h2(h1)
        h2 = mu2 + torch.exp(0.5 * lv2) * torch.randn_like(mu2)
        if stop_q:
            q_mu1, q_lv1 = mu1.detach(), lv1.detach()
            fixed = {n: p.detach() for n, p in self.q_h2.named_parameters()}
            q_mu2, q_lv2 = torch.func.functional_call(self.q_h2, fixed, (h1,))
        else:
            q_mu1, q_lv1, q_mu2, q_lv2 = mu1, lv1, mu2, lv2
        mp, lvp = self.p_h1(h2)
        log_w = (log_bernoulli(x[:, None], self.p_x(h1)) + log_normal(h1, mp, lvp)
                 + log_normal(h2, 0.0, torch.zeros(())) - log_normal(h1, q_mu1[:, None], q_lv1[:, None])
                 - log_normal(h2, q_mu2, q_lv2))
        return log_w, mu1


def loss(model, x, objective, k):
    if objective == "dreg":
        log_w, _ = model.log_w(x, k, stop_q=True)
        w = torch.softmax(log_w, 1).detach()
        # Encoder: -sum w^2 log w (q's parameters fixed inside log q); decoder: IWAE's.
        enc = -(w ** 2 * log_w).sum(1).mean()
        dec = -(torch.logsumexp(log_w, 1) - math.log(k)).mean()
        return enc, dec, log_w
    log_w, _ = model.log_w(x, k)
    if objective == "vae":
        return None, -log_w.mean(1).mean(), log_w
    return None, -(torch.logsumexp(log_w, 1) - math.log(k)).mean(), log_w


def train_pass(model, opt, train, objective, k, epochs, lr):
    for g in opt.param_groups:
        g["lr"] = lr
    enc_params = [p for n, p in model.named_parameters() if n.startswith(("encoder", "fc_", "q_h1", "q_h2"))]
    for _ in range(epochs):
        t = time.time()
        total = 0.0
        for idx in torch.randperm(len(train)).split(20):
            x = torch.bernoulli(train[idx])
            enc, dec, log_w = loss(model, x, objective, k)
            opt.zero_grad()
            if enc is None:
                dec.backward()
            else:
                enc_grads = torch.autograd.grad(enc, enc_params, retain_graph=True)
                dec.backward()
                for p, g in zip(enc_params, enc_grads):
                    p.grad = g
            opt.step()
            total += dec.item() * len(idx)
        print(f"epoch: loss {total / len(train):.4f} in {time.time() - t:.1f} s", flush=True)


@torch.no_grad()
def evaluate(model, test, eval_k, n):
    ll, elbo, means = [], [], []
    for x in test.split(500):
        log_w, mu = model.log_w(x, 1)
        elbo.append(log_w[:, 0])
        means.append(mu)
    for x in test[:n].split(max(1, 20000 // eval_k)):
        log_w, _ = model.log_w(x, eval_k)
        ll.append(torch.logsumexp(log_w, 1) - math.log(eval_k))
    ll = torch.cat(ll).double()
    au = (torch.cat(means).var(0) > 0.01).sum().item()
    return ll.mean().item(), ll.std().item() / math.sqrt(len(ll)), torch.cat(elbo).mean().item(), au


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["one", "two"], default="one")
    ap.add_argument("--objective", choices=["vae", "iwae", "dreg"], default="vae")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-k", type=int, default=5000)
    ap.add_argument("--eval-images", type=int, default=10000)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent / "data" / "mnist"))
    ap.add_argument("--out", default="out")
    ap.add_argument("--resume", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train = mnist(a.data, "train-images-idx3-ubyte.gz").reshape(-1, 784)
    gen = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    test = torch.bernoulli(mnist(a.data, "t10k-images-idx3-ubyte.gz").reshape(-1, 784), generator=gen)
    torch.manual_seed(a.seed)
    model = OneLayer() if a.model == "one" else TwoLayers()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
    stem = f"torch_iwae_paper_{a.model}_{a.objective}_k{a.k}_s{a.seed}"
    first = 0
    if a.resume:
        ck = torch.load(a.resume)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        first = ck["passes"]
    start = time.time()
    for i in range(first, a.passes):
        train_pass(model, opt, train, a.objective, a.k, 3 ** i, 1e-3 * 10 ** (-i / 7))
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                    "passes": i + 1}, out / f"{stem}.pt")
        # Each pass's end kept too, for the curve of test log-likelihood against passes.
        shutil.copyfile(out / f"{stem}.pt", out / f"{stem}.pass{i + 1}.pt")
        print(f"pass {i} done ({(time.time() - start) / 3600:.2f} h)", flush=True)
    hours = (time.time() - start) / 3600
    t = time.time()
    mean, se, elbo, au = evaluate(model, test, a.eval_k, a.eval_images)
    print(f"{stem}: {a.passes} passes: IWAE-{a.eval_k} {mean:.2f} +- {se:.2f}, ELBO {elbo:.2f}, "
          f"active units {au}", flush=True)
    print(f"evaluation took {time.time() - t:.1f} s", flush=True)
    csv = out / "torch_iwae_paper.csv"
    new = not csv.exists()
    with open(csv, "a") as f:
        if new:
            f.write("model,objective,k,seed,passes,hours_this_run,eval_k,eval_images,iwae_ll,stderr,elbo,active_units\n")
        f.write(f"{a.model},{a.objective},{a.k},{a.seed},{a.passes},{hours:.4f},{a.eval_k},{a.eval_images},"
                f"{mean:.4f},{se:.4f},{elbo:.4f},{au}\n")


if __name__ == "__main__":
    main()
