"""What the commands share (flags, the error line) and the demo and benchmark libraries."""
