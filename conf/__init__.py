# Makes conf/ importable as harness.conf, so Hydra finds it as pkg://harness.conf when installed.
