"""RunConfig: the one object that describes an experiment.

The YAML keys, the Python attribute paths (``cfg.parallel.num_processes``), the ``--set`` paths of the CLI
and the widget labels are the same names. ``validate()`` returns every problem at once, each naming its
key and the fix, and ``launch`` refuses a config with any problem before a process starts.

    schema.py             the frozen dataclasses, the choices of each key, YAML round-trip, overrides
    devices.py            DeviceInfo: what the machine offers, detected once per process
    validate.py           validate(cfg) (= RunConfig.validate): one validator per section, split sizes vs the batch
    strategies.py         STRATEGY_SPECS: the layout registry (declared in workbench/layouts.py), the layout checks
    after_pretraining.py  init_from, task, peft, distill
    factories.py          your own model.arch / data.source: the module is findable (tried: workbench/prelaunch.py)
"""

from workbench.config.after_pretraining import model_checkpoint, vocab_of
from workbench.config.devices import DeviceInfo, cached_devices, detected_devices, effective_device, fp8_backend
from workbench.config.schema import (
    ARCHS,
    DATA_SOURCES,
    DECAYS,
    DEVICES,
    GPT_PEFT_METHODS,
    LORA_TARGETS,
    NAME_RE,
    OPTIMIZERS,
    PEFT_METHODS,
    PP_SCHEDULES,
    PRECISIONS,
    PROFILE_WARMUP,
    TASK_KINDS,
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    PeftConfig,
    Problem,
    RunConfig,
    ScheduleConfig,
    TaskConfig,
    is_int,
    is_num,
)
from workbench.config.strategies import (
    STRATEGY_SPECS,
    StrategySpec,
    finetune_strategies,
    layout_modules,
    register_layout,
    strategies_using,
    strategies_with,
    unregister_layout,
)
from workbench.factory import is_import_string

__all__ = [
    "ARCHS",
    "DATA_SOURCES",
    "DECAYS",
    "DEVICES",
    "FINETUNE_STRATEGIES",  # live: read from STRATEGY_SPECS
    "GPT_PEFT_METHODS",
    "LORA_TARGETS",
    "NAME_RE",
    "OPTIMIZERS",
    "PEFT_METHODS",
    "PP_SCHEDULES",
    "PRECISIONS",
    "PROFILE_WARMUP",
    "STRATEGIES",  # live: read from STRATEGY_SPECS
    "STRATEGY_SPECS",
    "TASK_KINDS",
    "ConfigError",
    "DataConfig",
    "DeviceInfo",
    "DistillConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "PeftConfig",
    "Problem",
    "RunConfig",
    "ScheduleConfig",
    "StrategySpec",
    "TaskConfig",
    "cached_devices",
    "detected_devices",
    "effective_device",
    "finetune_strategies",
    "layout_modules",
    "register_layout",
    "unregister_layout",
    "fp8_backend",
    "is_import_string",
    "is_int",
    "is_num",
    "model_checkpoint",
    "strategies_using",
    "strategies_with",
    "vocab_of",
]


def __getattr__(name: str) -> tuple[str, ...]:
    # the layouts registered now (a layout can be added at any time: register_layout), never a stale copy
    if name == "STRATEGIES":
        return tuple(STRATEGY_SPECS)
    if name == "FINETUNE_STRATEGIES":
        return finetune_strategies()
    raise AttributeError(f"module 'workbench.config' has no attribute {name!r}")
