"""After pretraining: a labelled task, a classification head, LoRA through peft, init_from and distillation.

Nothing can be downloaded here, so the "pretrained model" is one the workbench trained itself: a run's
checkpoint (``checkpoints/step_N/model.safetensors``, written by ``accelerator.save_state``).

    init_from: runs/quickstart                       # start from that run's latest checkpoint
    task: {kind: classify, num_labels: 2}            # or lm (next-token prediction, the default)
    peft: {method: lora, r: 8, alpha: 16, target: [attn, mlp]}   # or none (full) / frozen (head only)
    distill: {teacher: runs/big, temperature: 2.0, alpha: 0.5}   # optional

One module per concept:

    task.py        the synthetic sentiment task (SentimentTask), its splits, chance and Bayes accuracy
    lora.py        PEFT: LoRA adapters through peft, their parameter count by formula
    hf_peft.py     PEFT on Hugging Face models: frozen, lora, adalora, prefix, adapter (peft), AdaLoRA's step hook
    load.py        a finished run's model (load_model, LoRA merged), its config, its folder
    build.py       the model a fine-tuning config trains: init_from's weights, then the PEFT method
    distill.py     knowledge distillation: the teacher and the loss
    metrics.py     accuracy, F1 and the eval / first metric events

The worker (workbench/worker.py) calls into this package at a few points: ``dataset`` for the data,
``build`` for the model, ``load_teacher`` and ``distill_loss`` for distillation, ``evaluate`` for accuracy
and F1 on the validation split at eval steps and on the test split at the end. Every name is re-exported
here, so ``from workbench import finetune as ft; ft.build(cfg)`` works as it always did.
"""

from workbench.finetune.build import active, build, trainable_params
from workbench.finetune.distill import distill_loss, distill_step_loss, load_teacher
from workbench.finetune.hf_peft import adalora_hook, merge_hf_peft, peft_trainable, wrap_hf_peft
from workbench.finetune.load import launch_dir, load_model, logits_of, read_weights, run_config, run_path
from workbench.finetune.lora import lora_modules, lora_param_count, wrap_lora
from workbench.finetune.metrics import classification_metrics, eval_event, evaluate, first_event
from workbench.finetune.task import (
    SPLITS,
    TILT,
    SentimentTask,
    bayes_accuracy,
    chance_accuracy,
    dataset,
    sentiment_task,
    task_arrays,
)

__all__ = [
    "SPLITS",
    "TILT",
    "SentimentTask",
    "active",
    "adalora_hook",
    "bayes_accuracy",
    "build",
    "chance_accuracy",
    "classification_metrics",
    "dataset",
    "distill_loss",
    "distill_step_loss",
    "eval_event",
    "evaluate",
    "first_event",
    "launch_dir",
    "load_model",
    "load_teacher",
    "logits_of",
    "lora_modules",
    "lora_param_count",
    "merge_hf_peft",
    "peft_trainable",
    "read_weights",
    "run_config",
    "run_path",
    "sentiment_task",
    "task_arrays",
    "trainable_params",
    "wrap_hf_peft",
    "wrap_lora",
]
