"""Audio in and out: decode and write, resample, and tempo/key/loudness analysis."""
