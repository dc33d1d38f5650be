"""What clients send, made into the model's input: float32 (N, 28, 28, 1) in [0, 1].

``formats`` is the table of what /predict reads (content type -> reader, and the docs
made from it); one module per format reads it: ``json_arrays``, ``tensors`` (raw tensors
and .npy files), ``image_files`` and ``uploads`` (files as they arrive, decoded under the
decode budget), ``mnist_like`` (a picture of a digit made the way MNIST's were). Every
path ends in ``model_input``, whose count and value checks the Open Inference Protocol's
codec uses too. The format modules are pure: they raise ``service.errors.InputError``
with a 4xx status and a message that says how to fix the input.
"""
