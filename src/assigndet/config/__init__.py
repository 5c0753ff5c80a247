"""Typed configuration schemas: one dataclass per section, one model config per architecture.

Every named choice is an enum of :mod:`assigndet.variants`, so OmegaConf checks it when a config
is built (``model.paa_variant=bogus`` fails there with the valid spellings) and the code below
compares it by identity. The model config of each architecture carries only its own fields:
:class:`ModelConfig` holds what every detector has, :class:`DenseFields` what the dense
detectors (ATSS, PAA, Dynamic ATSS) add, :class:`PAAFields` what PAA adds; the two-stage
detectors add their ``rcnn`` section (with ``rcnn.iounet`` for IoU-Net only).

Modules: :mod:`.sections` (backbone, input, TTA, R-CNN, data, solver, test), :mod:`.models`
(the per-architecture model configs and :class:`Config`), :mod:`.rules` (the value rules, checked
in ``__post_init__``), :mod:`.io` (overrides, YAML). The presets (named configs) are in :mod:`assigndet.presets`; this module knows none of them.
``key=value`` overrides (:func:`apply_overrides`) are parsed and type-checked by OmegaConf against
these dataclasses; ``model.arch=X`` switches the model section to architecture X first.
"""
from __future__ import annotations

from ..errors import ConfigError
from .io import apply_overrides, config_from_yaml, config_to_yaml, replace
from .models import (ARCH_OF, DENSE_ARCHS, MODEL_CONFIGS, ATSSModelConfig, Config, DenseFields, DynamicATSSModelConfig,
                     FasterRCNNModelConfig, IoUNetModelConfig, ModelConfig, PAAFields, PAAModelConfig, model_config,
                     with_arch)
from .sections import (CAFFE2_PIXEL_MEAN, BackboneConfig, DataConfig, InputConfig, IoUNetConfig, IoUNetRCNNConfig,
                       RCNNConfig, SolverConfig, TestConfig, TTAConfig)

__all__ = ["ConfigError", "BackboneConfig", "InputConfig", "TTAConfig", "IoUNetConfig", "RCNNConfig",
           "IoUNetRCNNConfig", "ModelConfig", "DenseFields", "PAAFields", "ATSSModelConfig", "DynamicATSSModelConfig",
           "PAAModelConfig", "FasterRCNNModelConfig", "IoUNetModelConfig", "MODEL_CONFIGS", "DENSE_ARCHS",
           "model_config", "with_arch", "DataConfig", "SolverConfig", "TestConfig", "Config", "apply_overrides",
           "config_to_yaml", "config_from_yaml", "CAFFE2_PIXEL_MEAN", "ARCH_OF", "replace"]
