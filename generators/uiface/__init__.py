"""UIFace: its UNet as a diffusers model, context-dropout training, two-stage sampling with
adaptive switching and attention injection, and the importer of the released weights."""
