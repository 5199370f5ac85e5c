"""Stage 2, tuning: one training loop (``training``) for every objective (``objectives``: TRL SFTTrainer today)
with peft (LoRA, DoRA, QLoRA) or full fine-tuning; loading and saving models."""
