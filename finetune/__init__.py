"""LoRA fine-tuning of a litgpt checkpoint on prepare's instruction records (see `python -m finetune -h`)."""
