"""latent against PyTorch on this machine, in pairs: each round times one training step
of a model with PyTorch (torch_cpu_speed.py) and, right after, with latent (its criterion
bench), so that both numbers of a pair see the same background load. A shared host's
speed drifts by 1.5x within minutes; the ratio of a pair moves much less. The linear
AE's epoch and the randomized PCA fit are timed the same way, latent's by the
`pca_vs_ae` example (median epoch of 10, median fit of 5).

    python scripts/paired_speed.py [--rounds 5] [--only conv_vae_b1,strided_vae_b128]

Prints each pair, then per row the median of PyTorch's medians, of latent's, and of
the per-pair ratios (latent / PyTorch). Needs what torch_cpu_speed.py needs (torch,
safetensors, numpy) and cargo; the first round builds the benches and the example.
"""

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# PyTorch row -> (latent bench target, criterion filter, the ID criterion prints).
ROWS = {
    "conv_ae_b250": ("conv", "train_step_b250", "conv_ae/train_step_b250_k20"),
    "conv_vae_b1": ("vae", "conv_vae_b1$", "conv_vae_b1"),
    "conv_vae_b100": ("vae", "conv_vae_b100", "conv_vae_b100"),
    "strided_vae_b128": ("vae", "strided_vae_b128", "strided_vae_b128"),
    "dcgan_vae_b1024": ("vae", "dcgan_vae_b1024", "dcgan_vae_b1024"),
    "mlp_vae_k1_b20": ("vae", "mlp_vae_k1_b20", "mlp_vae_k1_b20"),
    "mlp_iwae_k50_b20": ("vae", "mlp_iwae_k50_b20", "mlp_iwae_k50_b20"),
    "hvae2_iwae_k5_b20": ("vae", "hvae2_iwae_k5_b20", "hvae2_iwae_k5_b20"),
    # Timed by the example, not a bench: (None, pattern of its output line, group 1 in s).
    "linear_ae_epoch_b250": (None, r"linear autoencoder .*median ([0-9.]+) s/epoch", None),
    "pca_fit_randomized_k20": (None, r"^PCA, randomized solver\s+\S+\s+([0-9.]+) s", None),
}

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def torch_ms(row, threads):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "torch_cpu_speed.py"), "--threads", str(threads), "--only", row],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(rf"^{row}: median step ([0-9.]+) ms", out, re.M)
    if m:
        return float(m.group(1))
    m = re.search(rf"^{row}: median ([0-9.]+) s", out, re.M)
    if not m:
        raise SystemExit(f"no timing for {row} in torch_cpu_speed.py's output:\n{out}")
    return float(m.group(1)) * 1e3


def example_ms(pattern):
    out = subprocess.run(
        ["cargo", "run", "-q", "--release", "--example", "pca_vs_ae", "--",
         "--conv-epochs", "0", "--epochs", "10", "--pca-repeats", "5", "--out", "/tmp/paired_speed_out"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(pattern, out, re.M)
    if not m:
        raise SystemExit(f"no timing matching {pattern!r} in pca_vs_ae's output:\n{out}")
    return float(m.group(1)) * 1e3


def latent_ms(bench, filt, ident):
    if bench is None:
        return example_ms(filt)
    out = subprocess.run(
        ["cargo", "bench", "-q", "--bench", bench, "--", filt],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    # "<id>   time:   [lo unit median unit hi unit]", possibly with the id on its own line.
    m = re.search(rf"{re.escape(ident)}\s+time:\s+\[\S+ \S+ ([0-9.]+) (\S+) ", out)
    if not m:
        raise SystemExit(f"no timing for {ident} in the bench's output:\n{out}")
    return float(m.group(1)) * UNITS[m.group(2)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated rows: " + ", ".join(ROWS))
    a = ap.parse_args()
    rows = [r for r in a.only.split(",") if r] or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    pairs = {r: [] for r in rows}
    for k in range(a.rounds):
        for r in rows:
            t = torch_ms(r, a.threads)
            l = latent_ms(*ROWS[r])
            pairs[r].append((t, l))
            print(f"round {k + 1} {r}: PyTorch {t:.2f} ms, latent {l:.2f} ms, ratio {l / t:.3f}", flush=True)
    print("\nrow | PyTorch ms (median) | latent ms (median) | latent / PyTorch (median of pairs, range)")
    for r, ps in pairs.items():
        ratios = [l / t for t, l in ps]
        print(
            f"{r} | {statistics.median(t for t, _ in ps):.2f} | {statistics.median(l for _, l in ps):.2f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
