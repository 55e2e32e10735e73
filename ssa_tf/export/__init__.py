"""Deployment: SVD form to plain Keras layers (``merge``) and back (``convert``), SavedModel and ONNX with parity checks (``deploy``); ``config`` needs no TensorFlow."""
