"""NystromRidge on a Dask cluster against the same fit in memory, on real data.

nycflights13 ``arr_delay`` (the ``real`` part of ``benchmarks/kernel_machines.py``: ``dep_delay``,
schedule, distance, carrier and origin, standardised), the first ``--rows`` rows with a target
for training and the next 50,000 for testing. ``NystromRidge(num_centers=M)`` at its defaults
(``lengthscale="scale"``, ``alpha="gcv"``, an intercept), fitted

* in memory (NumPy, ``--threads`` torch threads), and
* on a ``distributed.LocalCluster`` of ``--workers`` processes x 1 thread, from a Dask array of
  ``--chunk-rows``-row chunks already held by the workers (``client.persist``: the data live
  on the cluster, as they would for a user whose data are there),

interleaved, ``--repeats`` times each; the table gives the median fit times, their ratio, the
test R² of both and the largest difference of their test predictions (relative to the spread of
the predictions). Beyond ``max(20 M, 20,000)`` rows the Dask fit chooses its centres from a
seeded uniform sample of rows, so the two fits differ by their centres, not by their solver.

Usage::

    python benchmarks/nystrom_dask.py                       # 200,000 rows, M = 1,000
    python benchmarks/nystrom_dask.py --rows 50000 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import dask.array as da
    import distributed

    from kernel_machines import _standardise, load_flights
    from snnk.models import NystromRidge

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--centers", type=int, default=1000)
    ap.add_argument("--chunk-rows", type=int, default=25_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the in-memory fit")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    X, y = load_flights()
    n = args.rows
    Xtr, Xte = _standardise(X[:n], X[n : n + 50_000])
    ytr, yte = y[:n], y[n : n + 50_000]
    print(f"flights arr_delay: {n:,} train rows, {len(yte):,} test, d = {X.shape[1]}")

    def r2(pred) -> float:
        return 1.0 - float(np.mean((yte - pred) ** 2) / np.var(yte))

    cluster = distributed.LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as client:
        Xd = client.persist(da.from_array(Xtr, chunks=(args.chunk_rows, -1)))
        yd = client.persist(da.from_array(ytr, chunks=args.chunk_rows))
        distributed.wait([Xd, yd])
        times: dict[str, list[float]] = {"in memory": [], "Dask": []}
        models = {}
        for _ in range(args.repeats):
            for name in times:
                torch.set_num_threads(args.threads)
                est = NystromRidge(num_centers=args.centers, random_state=0)
                t = time.perf_counter()
                est.fit(*((Xtr, ytr) if name == "in memory" else (Xd, yd)))
                times[name].append(time.perf_counter() - t)
                models[name] = est
    cluster.close()
    preds = {k: m.predict(Xte) for k, m in models.items()}
    diff = float(np.abs(preds["Dask"] - preds["in memory"]).max() / preds["in memory"].std())
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        "| fit | median time (s) | all (s) | test R² | alpha_ |",
        "|---|---|---|---|---|",
    ]
    for k in times:
        all_t = ", ".join(f"{t:.1f}" for t in times[k])
        rows.append(
            f"| {k} | {med[k]:.2f} | {all_t} | {r2(preds[k]):.4f} | {models[k].alpha_:.3g} |"
        )
    print("\n".join(rows))
    print(
        f"\nDask / in memory fit time: {med['Dask'] / med['in memory']:.2f}; largest test "
        f"prediction difference: {diff:.2e} of the predictions' standard deviation"
    )


if __name__ == "__main__":
    main()
