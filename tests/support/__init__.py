"""Test support: a real ``voxgate serve`` subprocess, audio files, a cuttable TCP proxy."""
