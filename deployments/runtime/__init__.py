"""The model runtime (torch): which model and how it looks (`spec`, `model_source`), the batched
forward pass (`inference`) and JPEG decoding on the model's device (`device_decode`)."""
