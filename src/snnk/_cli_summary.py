r"""What ``snnk fit`` and ``snnk predict`` tell the user: scores, hyper-parameters, warnings.

Regression: ``RMSE = √(Σ e²/n)``, ``MAE = Σ|e|/n`` and ``R² = 1 − Σe²/Σ(y − ȳ)²`` with
``e = y − ŷ``, beside the RMSE of always predicting the mean (the standard deviation of
``y``). Dominant errors: when the worst ``k`` = 0.1 % of the rows (at least one) hold 20 %
or more of ``Σe²``, and at least three times the ``2k·ln(n/k)/n`` that the largest ``k`` of
``n`` Gaussian errors hold, they are listed with ``R²`` without them. Classification:
accuracy beside that of always predicting the most frequent class, the log-loss
``−Σ log p̂(y_i)/n`` (with ``p̂`` clipped to ``[1e-15, 1]``) and the confusion matrix (rows:
true class, columns: predicted; the most frequent confusions when there are more than 8
classes).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

#: the worst rows considered for "dominant errors", as a fraction of the rows scored
WORST_FRACTION = 0.001
#: the share of the squared error those rows must hold to be reported
DOMINANT_SHARE = 0.2


def _num(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1e6 else f"{x:.4g}"


class RegressionScore:
    """Hold-out (or prediction-time) errors, accumulated over chunks."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []
        self._out: list[np.ndarray] = []

    def update(self, y, pred, rows, outside=None) -> None:
        """Add targets ``y``, predictions ``pred``, file row numbers ``rows`` and a mask of
        rows outside the training range."""
        self._y.append(np.asarray(y, dtype=np.float64).reshape(-1))
        self._p.append(np.asarray(pred, dtype=np.float64).reshape(-1))
        self._rows.append(np.asarray(rows))
        n = self._y[-1].shape[0]
        self._out.append(np.zeros(n, bool) if outside is None else np.asarray(outside, bool))

    @property
    def n(self) -> int:
        return sum(len(y) for y in self._y)

    def metrics(self) -> dict[str, float]:
        """``rmse``, ``mae``, ``r2`` and ``sd`` (RMSE of predicting the mean)."""
        y, p = np.concatenate(self._y), np.concatenate(self._p)
        e = y - p
        sse, tss = float(e @ e), float(np.sum((y - y.mean()) ** 2))
        return {
            "rmse": math.sqrt(sse / len(y)),
            "mae": float(np.mean(np.abs(e))),
            "r2": 1.0 - sse / tss if tss > 0 else math.nan,
            "sd": math.sqrt(tss / len(y)),
        }

    def lines(self, what: str) -> list[str]:
        if not self.n:
            return []
        m = self.metrics()
        return [
            f"{what:<9} RMSE {_num(m['rmse'])}   MAE {_num(m['mae'])}   R2 = {m['r2']:.4f}   "
            f"on {self.n:,} rows (predicting the mean: RMSE {_num(m['sd'])})"
        ]

    def warnings(self, what: str, target: str) -> list[str]:
        """Dominant errors, and the rows outside the training range."""
        if self.n < 2:
            return []
        y, p = np.concatenate(self._y), np.concatenate(self._p)
        rows, out = np.concatenate(self._rows), np.concatenate(self._out)
        e2 = (y - p) ** 2
        sse, notes = float(e2.sum()), []
        k = max(1, math.ceil(WORST_FRACTION * len(y)))
        worst = np.argsort(e2)[::-1][:k]
        share = float(e2[worst].sum()) / sse if sse > 0 else 0.0
        # the share the k largest of n squared Gaussian errors hold is about 2k·ln(n/k)/n:
        # three times that, at least DOMINANT_SHARE, is not noise in a small hold-out
        usual = 2 * k * math.log(len(y) / k) / len(y)
        if share >= max(DOMINANT_SHARE, 3 * usual) and k < len(y):
            keep = np.ones(len(y), bool)
            keep[worst] = False
            rest = y[keep]
            r2 = 1 - float(e2[keep].sum()) / max(float(np.sum((rest - rest.mean()) ** 2)), 1e-300)
            shown = ", ".join(
                f"row {int(rows[i])}: {target} {_num(y[i])}, predicted {_num(p[i])}"
                for i in worst[:3]
            )
            notes.append(
                f"{k} {what} row(s) hold {share:.0%} of the squared error ({shown}); R2 without "
                f"them {r2:.4f}. Check those rows (data errors? values outside the training "
                f"range?) or model a transformed target (e.g. its logarithm)"
            )
        if out.any() and (~out).any():
            rmse_out = math.sqrt(float(e2[out].mean()))
            rmse_in = math.sqrt(float(e2[~out].mean()))
            notes.append(
                f"RMSE on the {int(out.sum())} {what} rows outside the training range: "
                f"{_num(rmse_out)} (on the others {_num(rmse_in)})"
            )
        return notes


class ClassificationScore:
    """Hold-out (or prediction-time) labels and class probabilities, over chunks."""

    def __init__(self, classes) -> None:
        self.classes = list(np.asarray(classes).tolist())
        self._index = {c: i for i, c in enumerate(self.classes)}
        self.pairs: Counter = Counter()
        self.truth: Counter = Counter()
        self.n = self.right = 0
        self.log_loss_sum = 0.0
        self.has_proba = True

    def update(self, y, pred, proba=None) -> None:
        y, pred = np.asarray(y).tolist(), np.asarray(pred).tolist()
        self.n += len(y)
        self.right += sum(a == b for a, b in zip(y, pred, strict=True))
        self.pairs.update(zip(y, pred, strict=True))
        self.truth.update(y)
        if proba is None:
            self.has_proba = False
            return
        idx = np.array([self._index.get(v, -1) for v in y])
        p = np.where(idx >= 0, np.asarray(proba)[np.arange(len(y)), np.maximum(idx, 0)], 0.0)
        self.log_loss_sum -= float(np.log(np.clip(p, 1e-15, 1.0)).sum())

    def lines(self, what: str) -> list[str]:
        if not self.n:
            return []
        majority, count = self.truth.most_common(1)[0]
        text = (
            f"{what:<9} accuracy {self.right / self.n:.4f} on {self.n:,} rows (always "
            f"predicting {majority!r}: {count / self.n:.4f})"
        )
        if self.has_proba:
            text += f"   log-loss {self.log_loss_sum / self.n:.4f}"
        return [text, *self._confusion()]

    def _confusion(self) -> list[str]:
        labels = sorted(set(self.classes) | set(self.truth), key=str)
        if len(labels) > 8:
            top = [(pair, n) for pair, n in self.pairs.most_common() if pair[0] != pair[1]][:5]
            return [
                "confusions (true -> predicted): "
                + ", ".join(f"{a!r} -> {b!r} {n:,}" for (a, b), n in top)
            ]
        names = [str(c)[:12] for c in labels]
        width = max(8, *(len(s) + 1 for s in names))
        head = " " * 12 + "".join(f"{s:>{width}}" for s in names)
        out = ["confusion (rows: true class, columns: predicted)", head]
        for a, name in zip(labels, names, strict=True):
            cells = "".join(f"{self.pairs[(a, b)]:>{width},}" for b in labels)
            out.append(f"  {name:<10}{cells}")
        return out


def describe_model(est) -> str:
    """The hyper-parameters that the fit used or chose, in one line."""
    params = est.get_params(deep=False)
    parts = [f"kernel {params.get('kernel')}"]
    ls = getattr(est, "lengthscale_", None)
    if ls is None and hasattr(est, "kernel_"):
        ls = getattr(est.kernel_, "lengthscale", None)
    if isinstance(ls, int | float):
        how = " ('scale': l^2 = inputs x Var / 2)" if params.get("lengthscale") == "scale" else ""
        parts.append(f"lengthscale {ls:.4g}{how}")
    alpha = getattr(est, "alpha_", params.get("alpha"))
    if isinstance(alpha, int | float):
        how = (
            f" (chosen by {params['alpha'].upper()})"
            if isinstance(params.get("alpha"), str)
            else ""
        )
        parts.append(f"alpha {alpha:.3g}{how}")
    for name in ("noise_", "amplitude_"):
        if isinstance(getattr(est, name, None), float):
            parts.append(f"{name[:-1]} {getattr(est, name):.3g}")
    if "num_features" in params:
        parts.append(f"{getattr(est, 'num_features_', params['num_features'])} random features")
    if "num_centers" in params:
        parts.append(f"{len(getattr(est, 'centers_', ()))} centres")
    if getattr(est, "n_iter_", 0) and params.get("loss") == "log":
        parts.append(f"{est.n_iter_} Newton steps")
    return ", ".join(parts)
