"""Runtime: what every command runs inside: logging, signals, supervision."""
