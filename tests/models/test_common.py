"""The common estimator suite: every estimator of ``snnk.models`` against the same contract.

A new estimator is covered by adding one line to ``REGISTRY``: scikit-learn's
``check_estimator`` checks, save/load bit-exactness of every prediction method, float32
kept where the estimator promises it (float32 in -> float32 out, close to the float64 fit),
the global torch and NumPy RNGs untouched by fit and predict, and ``clone``. The estimators
of ``snnk.private`` (``PRIVATE``) take the same scikit-learn checks, RNG, clone and save/load
tests; they save their published DP release (``est.save`` / ``cls.load``) and compute on the
CPU, so the device and torch-in tests of ``snnk.models`` do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_classifier
from sklearn.utils.estimator_checks import parametrize_with_checks

import snnk.models
import snnk.private
from snnk.io import load_model, save_model
from snnk.models import (
    BundledClassifier,
    BundledRegressor,
    DeepKernelMachineClassifier,
    DeepKernelMachineRegressor,
    KernelRidgeCG,
    NystromRidge,
    NystromTransformer,
    OptimalWeightedLeastSquares,
    PositiveFeatureTransformer,
    RandomFeatureClassifier,
    RandomFeatureGP,
    RandomFeatureRidge,
    RandomFeatureTransformer,
)
from snnk.private import PrivateKernelClassifier


@dataclass
class Case:
    """One registered estimator: small, fast parameters and what it promises."""

    est: object
    #: parameters under which float32 input gives float32 predictions (None: not promised)
    float32: dict | None = field(default_factory=dict)
    #: fitted arrays (and modules) that are float32 after a float32 fit
    float32_state: tuple[str, ...] = ()
    #: scikit-learn checks expected to fail, with the reason
    xfail: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        changed = {k: v for k, v in self.est.get_params(deep=False).items() if k in _SHOWN}
        return type(self.est).__name__ + "".join(f"-{v}" for v in changed.values())


_SHOWN = ("loss", "solver")
_RF = ("coef_", "intercept_", "feature_map_")
_BUNDLED = ("coef_", "intercept_", "network_")

REGISTRY = [
    Case(RandomFeatureRidge(num_features=32, random_state=0), float32_state=_RF),
    Case(RandomFeatureClassifier(num_features=16, random_state=0), float32_state=_RF),
    Case(
        RandomFeatureClassifier(num_features=32, loss="squared", alpha="loo", random_state=0),
        float32_state=_RF,
    ),
    Case(BundledRegressor(num_features=32, random_state=0), {"dtype": None}, _BUNDLED),
    Case(BundledClassifier(num_features=16, random_state=0), {"dtype": None}, _BUNDLED),
    Case(
        BundledClassifier(num_features=32, loss="squared", alpha=1e-3, random_state=0),
        {"dtype": None},
        _BUNDLED,
    ),
    Case(NystromRidge(num_centers=20, lengthscale=2.0, alpha=1e-2, random_state=0)),
    # the defaults: lengthscale="scale", alpha="gcv", an intercept
    Case(NystromRidge(num_centers=20, random_state=0)),
    Case(NystromRidge(num_centers=20, lengthscale=2.0, alpha=1e-2, solver="cg", random_state=0)),
    Case(KernelRidgeCG(num_centers=10, lengthscale=2.0, alpha=1e-2, random_state=0)),
    # the marginal-likelihood optimisation is tested in test_gp.py; here the contract only
    Case(RandomFeatureGP(num_features=64, random_state=0)),
    # predicts in float64 whatever the input (its basis is evaluated in float64)
    Case(OptimalWeightedLeastSquares(degree=2, random_state=0), float32=None),
    Case(RandomFeatureTransformer(num_features=32, random_state=0)),
    Case(PositiveFeatureTransformer(num_features=16, random_state=0)),
    Case(NystromTransformer(num_centers=10, random_state=0)),
    # learned Gram matrices are optimised in float64 (L-BFGS); predictions are float64
    Case(
        DeepKernelMachineRegressor(depth=1, num_inducing=10, max_iter=5, random_state=0),
        float32=None,
    ),
    Case(
        DeepKernelMachineClassifier(depth=1, num_inducing=10, max_iter=5, random_state=0),
        float32=None,
    ),
]
IDS = [case.id for case in REGISTRY]
PRIVATE = [
    # seeded noise (reproducible, with a PrivacyLeakWarning), label set taken from y
    Case(PrivateKernelClassifier(lengthscale=2.0, num_features=64, random_state=0), None),
]
EVERY = REGISTRY + PRIVATE
EVERY_IDS = [case.id for case in EVERY]


def test_registry_covers_every_estimator():
    registered = {type(case.est).__name__ for case in REGISTRY}
    public = {n for n in snnk.models.__all__ if isinstance(getattr(snnk.models, n), type)}
    assert public <= registered, f"add a line to REGISTRY for {sorted(public - registered)}"
    private = {type(case.est).__name__ for case in PRIVATE}
    public = {
        n
        for n in snnk.private.__all__
        if isinstance(getattr(snnk.private, n), type) and hasattr(getattr(snnk.private, n), "fit")
    }
    assert public <= private, f"add a line to PRIVATE for {sorted(public - private)}"


def _expected_failures(est) -> dict[str, str]:
    for case in EVERY:
        if case.est is est:
            return case.xfail
    return {}


@parametrize_with_checks([case.est for case in EVERY], expected_failed_checks=_expected_failures)
def test_sklearn_contract(estimator, check):
    check(estimator)


def _data(n: int = 90, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.05 * rng.normal(size=n)
    return X, y


def _target(est, y):
    return np.where(y > 0.2, "up", "down") if is_classifier(est) else y


def _outputs(est, X) -> dict[str, np.ndarray]:
    out = (
        {"predict": est.predict(X)} if hasattr(est, "predict") else {"transform": est.transform(X)}
    )
    for name in ("predict_proba", "decision_function"):
        if hasattr(est, name):
            out[name] = getattr(est, name)(X)
    return out


def _save_load(est, folder):
    if isinstance(est, PrivateKernelClassifier):  # the release is the published file
        return type(est).load(est.save(folder / "m.safetensors"))
    return load_model(save_model(est, folder / "m.snnk"))


@pytest.mark.parametrize("case", EVERY, ids=EVERY_IDS)
def test_save_load_is_bit_exact(case, tmp_path):
    X, y = _data()
    est = clone(case.est).fit(X, _target(case.est, y))
    back = _save_load(est, tmp_path)
    assert type(back) is type(est)
    assert back.get_params().keys() == est.get_params().keys()
    for name, value in _outputs(est, X).items():
        np.testing.assert_array_equal(_outputs(back, X)[name], value, err_msg=name)


def _float_dtypes(value) -> set:
    if isinstance(value, torch.nn.Module):
        return {t.dtype for t in value.state_dict().values() if t.is_floating_point()}
    return {value.dtype}


@pytest.mark.parametrize(
    "case",
    [c for c in REGISTRY if c.float32 is not None],
    ids=[c.id for c in REGISTRY if c.float32 is not None],
)
def test_float32_is_kept(case):
    X, y = _data()
    t = _target(case.est, y)
    est = clone(case.est).set_params(**case.float32)
    m32 = est.fit(X.astype(np.float32), t)
    for name, value in _outputs(m32, X.astype(np.float32)).items():
        if value.dtype.kind == "f" and name != "predict_proba":
            assert value.dtype == np.float32, name
    for name in case.float32_state:
        dtypes = _float_dtypes(getattr(m32, name))
        assert dtypes and dtypes <= {torch.float32, np.dtype(np.float32)}, (name, dtypes)
    # float64 input stays float64, and the float32 fit is the float64 fit up to rounding
    m64 = clone(est).fit(X, t)
    for name, value in _outputs(m64, X).items():
        if value.dtype.kind == "f":
            assert value.dtype == np.float64, name
            got = _outputs(m32, X.astype(np.float32))[name]
            np.testing.assert_allclose(got, value, rtol=0, atol=2e-3 * np.abs(value).max())


def _rng_states():
    return torch.get_rng_state().clone(), np.random.get_state()  # noqa: NPY002


def _same_states(a, b) -> bool:
    return torch.equal(a[0], b[0]) and all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(a[1], b[1], strict=True)
    )


@pytest.mark.parametrize("random_state", [None, 7])
@pytest.mark.parametrize("case", EVERY, ids=EVERY_IDS)
def test_global_rngs_untouched(case, random_state):
    X, y = _data()
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the global RNG is what this test watches
    before = _rng_states()
    est = clone(case.est).set_params(random_state=random_state).fit(X, _target(case.est, y))
    _outputs(est, X)
    assert _same_states(before, _rng_states())


@pytest.mark.parametrize("case", EVERY, ids=EVERY_IDS)
def test_clone_round_trip(case):
    X, y = _data()
    t = _target(case.est, y)
    est = clone(case.est).fit(X, t)
    twin = clone(est)
    assert type(twin) is type(est) and twin.get_params() == est.get_params()
    assert not hasattr(twin, "n_features_in_")  # a clone is unfitted
    for name, value in _outputs(est, X).items():  # same random_state, same fit
        np.testing.assert_array_equal(_outputs(twin.fit(X, t), X)[name], value, err_msg=name)


@pytest.mark.parametrize("case", REGISTRY, ids=IDS)
def test_device_parameter(case):
    """``device`` is a constructor parameter (default the CPU); a device that cannot fit is a
    ``ValueError`` naming ``device`` at fit, before any work."""
    est = clone(case.est)
    assert est.get_params()["device"] == "cpu"
    X, y = _data()
    t = _target(est, y)
    with pytest.raises(ValueError, match="device"):
        clone(est).set_params(device="meta").fit(X, t)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            clone(est).set_params(device="cuda").fit(X, t)


@pytest.mark.parametrize("case", REGISTRY, ids=IDS)
def test_device_plumbing(case):
    """The fit and every prediction method with ``device="cpu"`` while torch's default device
    is the meta device: a tensor made without naming its device would land on meta and the
    run would fail or differ, so passing shows that every tensor is placed on the
    estimator's device (what a CUDA fit needs), on a machine without a GPU."""
    X, y = _data()
    t = _target(case.est, y)
    ref = _outputs(clone(case.est).fit(X, t), X)
    with torch.device("meta"):
        est = clone(case.est).set_params(device="cpu").fit(X, t)
        out = _outputs(est, X)
    for name, value in ref.items():
        np.testing.assert_array_equal(out[name], value, err_msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", REGISTRY, ids=IDS)
def test_cuda_fit_matches_cpu(case):
    """``device="cuda"`` runs the fit on the GPU: NumPy in, NumPy out close to the CPU fit;
    CUDA tensors in, CUDA tensors out."""
    X, y = _data()
    t = _target(case.est, y)
    ref = _outputs(clone(case.est).fit(X, t), X)
    est = clone(case.est).set_params(device="cuda").fit(X, t)
    for name, value in _outputs(est, X).items():
        assert isinstance(value, np.ndarray), name
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, ref[name], rtol=1e-4, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(value, ref[name], err_msg=name)
    for name, value in _outputs(est, torch.as_tensor(X, device="cuda")).items():
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "OUS"):
            assert isinstance(value, torch.Tensor) and value.device.type == "cuda", name


@pytest.mark.parametrize("case", REGISTRY, ids=IDS)
def test_torch_in_torch_out(case):
    """A torch tensor in gives a torch tensor out, on the input's device, equal to the NumPy
    answer; NumPy in stays NumPy out (scikit-learn's world)."""
    X, y = _data()
    est = clone(case.est).fit(X, _target(case.est, y))
    ref = _outputs(est, X)
    got = _outputs(est, torch.as_tensor(X))
    for name, value in ref.items():
        assert isinstance(value, np.ndarray), name
        if value.dtype.kind in "OUS":  # class labels that are strings have no tensor form
            np.testing.assert_array_equal(got[name], value, err_msg=name)
            continue
        assert isinstance(got[name], torch.Tensor) and got[name].device.type == "cpu", name
        np.testing.assert_array_equal(got[name].numpy(), value, err_msg=name)
