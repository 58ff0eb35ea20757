"""Loading what users download (the released checkpoints, in their original naming) into diffusers and
transformers models, and converting them once into a diffusers-layout folder."""
