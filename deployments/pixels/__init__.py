"""Pixels on the CPU, Ray-free and torch-free: decoding and limits (`imaging`), resize and
letterbox geometry (`geometry`), masks back in original pixels (`masks`)."""
