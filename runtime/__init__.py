"""Device runtime: numpy, Pillow and a TFLite interpreter; never TensorFlow."""
