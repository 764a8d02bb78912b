"""Hallo3: CogVideoX-5B-I2V with audio and face cross-attention and an identity reference network (480x720, 49-frame
clips). Models, checkpoints, its sampler and guidance, and the backbone the render engine drives."""
