"""The commands: embed, finetune, evaluate, ablate, segment, predict, classify. Each orchestrates the shared
parts below it; none imports another."""
