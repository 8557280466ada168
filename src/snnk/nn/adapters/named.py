"""Named adapters at PEFT's level: add, switch, disable, delete, unload (bit for bit).

Each target layer gets a child :class:`AdapterSlot` (``<layer>.snnk_adapters``) holding one
:class:`~snnk.nn.SNNKAdapter` per adapter name, and one forward hook that runs the slot on the
layer's output. No module of the model is replaced, so removing the slots and hooks
(:func:`unload_adapters`) restores the original model exactly: same objects, same
``state_dict``, same ``requires_grad`` flags, same outputs bit for bit. A PEFT LoRA on the
same model is independent: PEFT wraps the layers it targets, and a hooked layer keeps its
hook inside PEFT's wrapper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from snnk.nn.adapters._layout import unwrap
from snnk.nn.adapters.adapter import SNNKAdapter
from snnk.nn.adapters.config import SLOT_NAME, AdapterConfig, resolve_targets

_STATE = "_snnk_named_adapters"


class AdapterSlot(nn.Module):
    """The named adapters of one layer; ``forward`` applies the active ones in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.enabled = True

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return y
        for name in self.active:
            if name in self.adapters:
                y = self.adapters[name](y)
        return y

    def extra_repr(self) -> str:
        return f"active={list(self.active)}, enabled={self.enabled}"


def _slot_hook(module: nn.Module, args, output):
    """Forward hook of a target layer: its output through its slot (a module-level function,
    so deep copies and pickles of the model keep working)."""
    slot = module._modules.get(SLOT_NAME)
    return output if slot is None else slot(output)


class _State:
    """Per-model bookkeeping, kept on the (unwrapped) model as a plain attribute."""

    def __init__(self, model: nn.Module) -> None:
        self.configs: dict[str, AdapterConfig] = {}
        self.targets: dict[str, list[str]] = {}
        self.active: tuple[str, ...] = ()
        self.enabled = True
        # requires_grad of every parameter before the first adapter: unload restores them
        self.flags = {id(p): (p, p.requires_grad) for p in model.parameters()}


def _state(model: nn.Module, *, create: bool = False) -> _State:
    model = unwrap(model)
    state = model.__dict__.get(_STATE)
    if state is None:
        if not create:
            raise ValueError(
                "this model has no named SNNK adapters; call add_adapter(model, config) first"
            )
        state = _State(model)
        object.__setattr__(model, _STATE, state)
    return state


def _check_name(name: object, what: str = "adapter_name") -> str:
    plain = isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum()
    if not plain or not name.isascii():
        raise ValueError(
            f"{what} must be a non-empty string of letters, digits, '_' or '-' (it names a "
            f"module and a folder), got {name!r}"
        )
    return name


def _check_known(state: _State, names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in state.configs]
    if unknown:
        raise ValueError(
            f"no adapter named {unknown[0]!r}; this model has {sorted(state.configs)} "
            "(add it with add_adapter(model, config, adapter_name=...))"
        )


def _slots(model: nn.Module) -> Iterator[tuple[str, AdapterSlot]]:
    for name, module in unwrap(model).named_modules():
        if isinstance(module, AdapterSlot):
            yield name.rpartition(".")[0], module


def _head_parameters(model: nn.Module) -> list[nn.Parameter]:
    base = getattr(model, "base_model", model)
    if base is model:
        return []
    in_base = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in in_base]


def _refresh(model: nn.Module, state: _State) -> None:
    """Push active/enabled into every slot and set ``requires_grad`` of what this module
    owns: active adapters train, inactive ones are frozen, and the head trains while an
    active config says so. Other parameters keep their flags (the base model was frozen
    when the first adapter came in; a PEFT LoRA beside the adapters keeps its own)."""
    train_head = any(state.configs[n].train_head for n in state.active)
    for p in _head_parameters(model):
        p.requires_grad_(train_head)
    for _, slot in _slots(model):
        slot.active, slot.enabled = state.active, state.enabled
        for name, adapter in slot.adapters.items():
            adapter.requires_grad_(name in state.active)


def _freeze_base(model: nn.Module) -> None:
    """Freeze every parameter but SNNK adapters' and PEFT's (``lora_*``) own."""
    for name, p in model.named_parameters():
        parts = name.split(".")
        if SLOT_NAME not in parts and not any(x.startswith("lora_") for x in parts):
            p.requires_grad_(False)


def add_adapter(
    model: nn.Module, config: AdapterConfig | None = None, adapter_name: str = "default"
) -> nn.Module:
    """Add a named SNNK adapter to every layer ``config.target_modules`` selects.

    The first adapter of a model becomes active (it trains; the base model is frozen);
    later ones are added inactive (switch with :func:`set_adapter`). Adapters start at the
    identity (zero gate), so outputs do not change. All or nothing: on any error the model
    is left as it was.

    Parameters
    ----------
    model : torch.nn.Module
        Any module (a Hugging Face model, ``nn.Sequential``, ...), not wrapped in DDP.
    config : AdapterConfig, optional
        Default ``AdapterConfig()`` (built-in placement, supported architectures only).
    adapter_name : str, default "default"

    Returns
    -------
    torch.nn.Module
        ``model``, changed in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if unwrap(model) is not model:
        raise ValueError(
            "model is wrapped (DistributedDataParallel/DataParallel); add adapters to the bare "
            "model, then wrap it"
        )
    config = AdapterConfig() if config is None else config
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    adapter_name = _check_name(adapter_name)
    existing = model.__dict__.get(_STATE)
    if existing is not None and adapter_name in existing.configs:
        raise ValueError(
            f"adapter_name={adapter_name!r} exists already; pick another name or "
            "delete_adapter(model, name) first"
        )
    targets = resolve_targets(model, config.target_modules)
    built = []
    for i, (name, module, width) in enumerate(targets):
        ref = next(iter(module.parameters()), None)
        ref = next(iter(model.parameters()), None) if ref is None else ref
        adapter = SNNKAdapter(
            width,
            config.num_features,
            config.activation,
            bottleneck=config.bottleneck,
            input_norm=config.input_norm,
            seed=config.seed + i,
            dtype=None if ref is None else ref.dtype,
            device=None if ref is None else ref.device,
        )
        built.append((name, module, adapter))
    state = _state(model, create=True)
    added: list[tuple[nn.Module, bool]] = []
    try:
        for _, module, adapter in built:
            slot = module._modules.get(SLOT_NAME)
            fresh = slot is None
            if fresh:
                slot = AdapterSlot()
                module.add_module(SLOT_NAME, slot)
                module.register_forward_hook(_slot_hook)
            slot.adapters[adapter_name] = adapter
            added.append((module, fresh))
        state.configs[adapter_name] = config
        state.targets[adapter_name] = [name for name, _, _ in built]
        if not state.active:
            state.active = (adapter_name,)
            _freeze_base(model)
        _refresh(model, state)
    except BaseException:
        for module, fresh in added:
            _remove_from(module, adapter_name, drop_empty=fresh)
        state.configs.pop(adapter_name, None)
        state.targets.pop(adapter_name, None)
        if not state.configs:
            _forget(model, state)
        raise
    return model


def _remove_from(module: nn.Module, adapter_name: str, *, drop_empty: bool = True) -> None:
    slot = module._modules.get(SLOT_NAME)
    if slot is None:
        return
    if adapter_name in slot.adapters:
        del slot.adapters[adapter_name]
    if drop_empty and not len(slot.adapters):
        del module._modules[SLOT_NAME]
        for key, hook in list(module._forward_hooks.items()):
            if hook is _slot_hook:
                del module._forward_hooks[key]


def _forget(model: nn.Module, state: _State) -> None:
    """Restore every ``requires_grad`` flag and drop the bookkeeping."""
    for p, flag in state.flags.values():
        p.requires_grad_(flag)
    model.__dict__.pop(_STATE, None)


def set_adapter(model: nn.Module, adapter_name: str | Sequence[str]) -> None:
    """Make ``adapter_name`` (or several, applied in the given order) the active adapter(s):
    they run and train; the others stay in the model, frozen and unused."""
    state = _state(model)
    names = (adapter_name,) if isinstance(adapter_name, str) else tuple(adapter_name)
    if not names:
        raise ValueError("adapter_name must name at least one adapter")
    _check_known(state, names)
    state.active = names
    _refresh(unwrap(model), state)


def active_adapters(model: nn.Module) -> tuple[str, ...]:
    """The names of the active adapters (empty while disabled)."""
    state = _state(model)
    return state.active if state.enabled else ()


def list_adapters(model: nn.Module) -> dict[str, AdapterConfig]:
    """Every adapter name and its config (with the seed actually used)."""
    return dict(_state(model).configs)


@contextlib.contextmanager
def _enabled_after(model: nn.Module, previous: bool) -> Iterator[nn.Module]:
    try:
        yield model
    finally:
        state = unwrap(model).__dict__.get(_STATE)
        if state is not None:
            state.enabled = previous
            _refresh(unwrap(model), state)


def disable_adapters(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Run the base model alone: every adapter is bypassed (and nothing else changes).

    Works as a call (until :func:`enable_adapters`) and as a context manager
    (``with disable_adapters(model): ...``, re-enabled on exit).
    """
    state = _state(model)
    previous, state.enabled = state.enabled, False
    _refresh(unwrap(model), state)
    return _enabled_after(model, previous)


def enable_adapters(model: nn.Module) -> None:
    """Undo :func:`disable_adapters`."""
    state = _state(model)
    state.enabled = True
    _refresh(unwrap(model), state)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove one named adapter; if it was active, the first remaining one becomes active.
    Deleting the last adapter is :func:`unload_adapters`."""
    state = _state(model)
    _check_known(state, [adapter_name])
    if len(state.configs) == 1:
        unload_adapters(model)
        return
    inner = unwrap(model)
    for name in state.targets.pop(adapter_name):
        _remove_from(inner.get_submodule(name), adapter_name)
    del state.configs[adapter_name]
    remaining = tuple(n for n in state.active if n != adapter_name)
    state.active = remaining or (next(iter(state.configs)),)
    _refresh(inner, state)


def unload_adapters(model: nn.Module) -> nn.Module:
    """Remove every named adapter, hook and flag change: the original model, bit for bit."""
    state = _state(model)
    inner = unwrap(model)
    for owner, _ in list(_slots(inner)):
        module = inner.get_submodule(owner)
        for name in list(module._modules[SLOT_NAME].adapters):
            _remove_from(module, name)
    _forget(inner, state)
    return model
