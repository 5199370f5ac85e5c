"""Stage 2, tuning: TRL SFTTrainer with peft (LoRA, DoRA, QLoRA) or full fine-tuning; loading and saving models."""
