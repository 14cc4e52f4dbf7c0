"""Times PyTorch on the CPU at the recipes latent's benches and examples time, so that the
two can be compared on the same machine (README's speed tables).

    python scripts/torch_cpu_speed.py [--threads 2] [--only linear_epoch,pca,...]

Each row is the median of repeated runs after a warm-up, in the units latent's criterion
benches report: one training step (forward, backward, Adam) of each notebook model at
its batch size, the linear autoencoder's epoch (batch 250, shuffled, as `pca_vs_ae`), and
the PCA fit (moments + `torch.svd_lowrank` with latent's randomized-solver settings).
Batches are MNIST training images; the models are the notebooks' classes from
torch_interop.py (CIS-522 ConvAutoEncoder written out below). Needs torch and safetensors
(pip install torch safetensors: torch_interop imports the latter).
"""

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_gpu_vae import conv_vae_loss, dcgan_vae_loss  # noqa: E402
from torch_interop import BiasLayer, ConvVAE, DcganVAE, StridedVAE  # noqa: E402


def mnist(root, name):
    with gzip.open(Path(root) / name) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return torch.from_numpy(raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


class ConvAE(nn.Module):
    """CIS-522 W8 ConvAutoEncoder (K = 20, 32 filters of 5x5)."""

    def __init__(self, K=20, filters=32, k=5):
        super().__init__()
        flat = filters * 20 * 20
        self.enc = nn.Sequential(
            BiasLayer((1, 28, 28)),
            nn.Conv2d(1, filters, k),
            nn.ReLU(),
            nn.Conv2d(filters, filters, k),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, K),
        )
        self.dec = nn.Sequential(
            nn.Linear(K, flat),
            nn.ReLU(),
            nn.Unflatten(-1, (filters, 20, 20)),
            nn.ConvTranspose2d(filters, filters, k),
            nn.ReLU(),
            nn.ConvTranspose2d(filters, 1, k),
            BiasLayer((1, 28, 28)),
        )

    def forward(self, x):
        return self.dec(self.enc(x))


def strided_vae_loss(m, x):
    mu, logvar = m.posterior(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    out = m.generate(z)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
    return (out - x).pow(2).sum() + kl


def median_step(model, loss_fn, opt, train, batch, warm, reps):
    times = []
    for i in range(warm + reps):
        x = train[torch.randint(len(train), (batch,))]
        t = time.perf_counter()
        loss = loss_fn(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warm:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_rows(train, only):
    mse = lambda m, x: F.mse_loss(m(x), x)  # noqa: E731
    rows = {
        "conv_ae_b250": (lambda: ConvAE(), mse, 250, 1e-3, 1e-5, 3, 15),
        "conv_vae_b1": (lambda: ConvVAE(K=20), conv_vae_loss, 1, 1e-3, 1e-6, 50, 500),
        "conv_vae_b100": (lambda: ConvVAE(K=20), conv_vae_loss, 100, 1e-3, 1e-6, 5, 40),
        "strided_vae_b128": (lambda: StridedVAE(32), strided_vae_loss, 128, 1e-3, 0.0, 20, 200),
        "dcgan_vae_b1024": (lambda: DcganVAE(z_dim=32), dcgan_vae_loss, 1024, 2e-3, 0.0, 2, 10),
    }
    # Burda et al.'s models (scripts/torch_iwae_paper.py) at their batch of 20 on
    # binarized images, Adam with eps 1e-4 as the paper's.
    from torch_iwae_paper import OneLayer, TwoLayers, loss as burda_loss  # noqa: E402

    def burda(objective, k):
        return lambda m, x: burda_loss(m, torch.bernoulli(x.reshape(len(x), -1)), objective, k)[1]

    rows.update({
        "mlp_vae_k1_b20": (OneLayer, burda("vae", 1), 20, 1e-3, 0.0, 50, 1000),
        "mlp_iwae_k50_b20": (OneLayer, burda("iwae", 50), 20, 1e-3, 0.0, 20, 300),
        "hvae2_iwae_k5_b20": (TwoLayers, burda("iwae", 5), 20, 1e-3, 0.0, 30, 500),
    })
    for name, (make, loss_fn, batch, lr, wd, warm, reps) in rows.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        model = make().train()
        eps = 1e-4 if name.endswith("_b20") else 1e-8
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd, eps=eps)
        t = median_step(model, loss_fn, opt, train, batch, warm, reps)
        print(f"{name}: median step {t * 1e3:.3f} ms ({reps} steps)", flush=True)


def linear_ae_and_adam():
    """The notebook's linear AE (784 -> 20 -> 784) and its Adam (lr 1e-3, weight decay 1e-5)."""
    model = nn.Sequential(nn.Linear(784, 20), nn.Linear(20, 784))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)


def linear_ae_epoch(model, opt, x, perm, batch=250):
    """One epoch of MSE training on the rows of x, in the order perm."""
    for s in range(0, len(x), batch):
        xb = x[perm[s : s + batch]]
        loss = F.mse_loss(model(xb), xb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def linear_epoch(train, reps):
    x = train.reshape(len(train), -1)
    torch.manual_seed(0)
    model, opt = linear_ae_and_adam()
    times = []
    for _ in range(reps):
        perm = torch.randperm(len(x))
        t = time.perf_counter()
        linear_ae_epoch(model, opt, x, perm)
        times.append(time.perf_counter() - t)
    print(f"linear_ae_epoch_b250: median {statistics.median(times):.4f} s "
          f"(min {min(times):.4f}, max {max(times):.4f}, {reps} epochs)", flush=True)


def pca_fit(train, reps, k=20):
    x = train.reshape(len(train), -1)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        mu = x.mean(0)
        xc = x - mu
        cov = xc.T @ xc / (len(x) - 1)
        _, s, _ = torch.svd_lowrank(cov, q=k + 20, niter=8)
        times.append(time.perf_counter() - t)
    print(f"pca_fit_randomized_k{k}: median {statistics.median(times):.4f} s "
          f"(min {min(times):.4f}, {reps} fits; top eigenvalue {s[0].item():.4f})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--only", default="", help="comma-separated row names")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    only = set(filter(None, a.only.split(",")))
    train = mnist(a.data, "train-images-idx3-ubyte.gz")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    if not only or "linear_ae_epoch_b250" in only:
        linear_epoch(train, 10)
    if not only or "pca_fit_randomized_k20" in only:
        pca_fit(train, 5)
    step_rows(train, only)


if __name__ == "__main__":
    main()
