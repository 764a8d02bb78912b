"""Hallo and Hallo2: the SD1.5-UNet talking-portrait backbones (ReferenceNet, audio-driven UNet3D, DDIM sampler)."""
