"""Input pipelines: in-memory arrays (CIFAR, synthetic) kept on the device."""
