"""Fine-tuning: start a run from pretrained weights, LoRA adapters, classification and instruction tuning.

- :mod:`zoo.finetune.pretrained`: ``trainer.init_from`` (a zoo checkpoint, a ``zoo-import`` folder or
  a local Hugging Face checkpoint folder) as a run's initial weights, with a report of what loaded.
- :mod:`zoo.finetune.lora`: low-rank adapters (``adapter=lora``), merged back into the base weights.
- :mod:`zoo.finetune.classify`: a classification head on pooled hidden states (``task=...``).
- :mod:`zoo.finetune.chat`: a chat template and assistant-only loss for instruction tuning.

Hydra is imported only by the entry points; modeling code here imports torch alone.
"""
