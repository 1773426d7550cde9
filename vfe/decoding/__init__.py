"""Decoding: frames in presentation order with exact times, one module per library."""
