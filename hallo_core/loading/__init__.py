"""Reading and writing model files safely: the restricted unpickler, lazy state dicts streamed into meta-initialised
models, and the safetensors writer."""
