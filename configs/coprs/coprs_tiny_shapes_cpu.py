# The embedded CPU default: the tiny CoPRS assembly (random-initialised, built locally).
_base_ = ['../_base_/models/coprs_tiny.py', '../_base_/default_runtime.py']
