"""Approximate a Gaussian kernel with random features and watch the error fall with D.

Run: ``.venv/bin/python examples/kernel_approximation.py``
"""

import torch

from snnk import features, kernels


def main() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 16, generator=g, dtype=torch.float64)
    k = kernels.Gaussian(lengthscale=4.0)
    K = k(X)
    print(f"{'D':>6} " + " ".join(f"{s:>11}" for s in features.SAMPLERS))
    for D in (128, 512, 2048):
        errs = []
        for sampler in features.SAMPLERS:
            phi = features.FourierFeatures(k, 16, D, sampler=sampler, seed=0, dtype=torch.float64)
            Z = phi(X)
            errs.append(float(torch.linalg.norm(Z @ Z.T - K) / torch.linalg.norm(K)))
        print(f"{D:>6} " + " ".join(f"{e:11.4f}" for e in errs))

    # Save and reload: the random draw lives in the state_dict, so outputs match bit for bit.
    phi = features.FourierFeatures(k, 16, 512, sampler="structured", seed=1)
    clone = features.FourierFeatures(k, 16, 512, sampler="structured", seed=2)
    clone.load_state_dict(phi.state_dict())
    assert torch.equal(phi(X.float()), clone(X.float()))
    print("state_dict round trip: identical outputs")


if __name__ == "__main__":
    main()
