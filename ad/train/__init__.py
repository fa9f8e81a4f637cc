"""What every trainer (distillation, SuperLM training, fine-tuning, teacher adaptation) runs on:
optimizers and update masks, parameter trees, sharding over the mesh, checkpoints and the step loop."""
