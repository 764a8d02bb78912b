"""Where weights live: memory presets (which model is on the device when), fp8 storage with upcasting, and block
streaming from host memory."""
