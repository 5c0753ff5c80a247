"""``key=value`` overrides and YAML files: parsed and type-checked by OmegaConf against the
schema; ``model.arch=X`` switches the model section to architecture X first."""
from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from ..variants import Arch
from .models import MODEL_CONFIGS, Config, with_arch


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0]


def _parse(value: str):
    """OmegaConf's own parsing of a single value: lists "[1,2]", numbers, bools, null, strings."""
    if value == "":
        return ""
    try:
        return OmegaConf.from_dotlist([f"v={value}"]).v
    except OmegaConfBaseException:
        return value


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    return key.strip(), value


def _switch_arch(cfg: Config, overrides: list[str]) -> Config:
    """Apply a ``model.arch=X`` override first: the model section becomes architecture X."""
    for item in overrides:
        key, value = _split(item)
        if key == "model.arch":
            try:
                arch = Arch(str(_parse(value)))
            except ValueError as e:
                raise ConfigError(f"bad override {item!r}: {e}") from None
            cfg = dataclasses.replace(cfg, model=with_arch(cfg.model, arch))
    return cfg


def _build(node, where: str | None) -> Config:
    """The dataclass object of an OmegaConf node; schema errors become one-line ConfigErrors."""
    try:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where or 'config'}: {_first_line(e)}") from None


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``key=value`` overrides, type-checked against the schema."""
    overrides = list(overrides)
    base = OmegaConf.structured(_switch_arch(cfg, overrides))
    for item in overrides:
        key, value = _split(item)
        if key == "model.arch":
            continue
        try:
            OmegaConf.update(base, key, _parse(value), merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override {item!r}: {_first_line(e)}") from None
    return _build(base, None)  # a broken value rule names its key


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(path: str) -> Config:
    """A config saved by :func:`config_to_yaml` (``config.yaml`` beside the checkpoints)."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001  (YAML and OS errors come in many types)
        raise ConfigError(f"cannot read config file {path}: {_first_line(e)}") from None
    arch = OmegaConf.select(loaded, "model.arch", default=Arch.atss.value)
    try:
        model_cls = MODEL_CONFIGS[Arch(str(arch))]
    except ValueError as e:
        raise ConfigError(f"{path}: model.arch: {e}") from None
    base = OmegaConf.structured(Config(model=model_cls()))
    try:
        merged = OmegaConf.merge(base, loaded)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    return _build(merged, path)


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
