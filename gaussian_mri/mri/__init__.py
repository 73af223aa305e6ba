"""MRI operators and data: FFT, coils, sampling masks, ESPIRiT, k-space I/O, baselines."""
